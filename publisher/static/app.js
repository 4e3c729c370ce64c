// ringmatch live page: 1-minute candles, depth chart, book ladder, trades over /ws; the
// user's balances, open orders (with cancel) and fills over signed REST + the user channel.
// Plain JS and SVG, no build step, nothing from other hosts.  Protocol: docs/publisher.md.
"use strict";

const state = {
  products: new Map(), product: null, ws: null,
  bids: new Map(), asks: new Map(), l2seq: null,
  trades: [], tradeIds: new Set(), minTradeId: 0,
  candles: new Map(), candleSource: null, candleTimer: null,
  auth: null, userSeq: 0, refreshTimer: null, fillsFromRest: null, sessionFills: [],
  openOrders: [], balances: [], fills: [],
};
const $ = (id) => document.getElementById(id);
const GRANULARITY = 60;

function esc(v) {
  return String(v === null || v === undefined ? "" : v).replace(/[&<>"']/g,
    (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}

// ---------------------------------------------------------------- precision
function decimalsOf(increment) {
  const s = String(increment || "1");
  const e = s.match(/e-(\d+)$/i);
  if (e) return parseInt(e[1], 10);
  const i = s.indexOf(".");
  return i < 0 ? 0 : s.length - i - 1;
}
function product() { return state.products.get(state.product) || {}; }
function priceDec() { return decimalsOf(product().quote_increment); }
function sizeDec() { return decimalsOf(product().base_increment); }
function fmtPrice(x) { return Number(x).toFixed(priceDec()); }
function fmtSize(x) { return Number(x).toFixed(sizeDec()); }

// ---------------------------------------------------------------- products, REST market data
async function loadProducts() {
  const res = await fetch("/products");
  const products = await res.json();
  const sel = $("product");
  sel.innerHTML = "";
  for (const p of products) {
    state.products.set(p.id, p);
    const o = document.createElement("option");
    o.value = p.id; o.textContent = p.id;
    sel.appendChild(o);
  }
  const wanted = new URLSearchParams(location.search).get("product");
  if (wanted && state.products.has(wanted)) sel.value = wanted;
  state.product = sel.value;
  sel.addEventListener("change", () => { switchProduct(sel.value); });
}

function tradeEpoch(t) {           // "2026-12-04T01:57:47.123456Z" -> seconds (UTC)
  return Date.parse(String(t.time).slice(0, 19) + "Z") / 1000;
}

function addTrade(t) {
  if (state.tradeIds.has(t.trade_id) || t.trade_id < state.minTradeId) return false;
  state.tradeIds.add(t.trade_id);
  state.trades.push(t);
  if (state.candleSource === "trades") addToCandle(t);
  return true;
}

function addToCandle(t) {          // the bucket's open/close follow trade_id order, not arrival
  const start = Math.floor(tradeEpoch(t) / GRANULARITY) * GRANULARITY;
  const p = parseFloat(t.price), q = parseFloat(t.size), id = t.trade_id;
  const c = state.candles.get(start);
  if (!c) {
    state.candles.set(start, {t: start, o: p, h: p, l: p, c: p, v: q, oid: id, cid: id});
    return;
  }
  if (id < c.oid) { c.o = p; c.oid = id; }
  if (id > c.cid) { c.c = p; c.cid = id; }
  if (p > c.h) c.h = p;
  if (p < c.l) c.l = p;
  c.v += q;
}

async function loadTrades() {
  const name = state.product;
  const res = await fetch("/products/" + encodeURIComponent(name) + "/trades?limit=1000");
  if (!res.ok || name !== state.product) return;
  const trades = await res.json();
  for (const t of trades.slice().reverse()) addTrade(t);
  state.trades.sort((a, b) => a.trade_id - b.trade_id);
  renderTrades(); renderCandles();
}

async function loadCandles() {
  // GET /products/{id}/candles (Coinbase: [time, low, high, open, close, volume], newest
  // first); without it (404) the candles are built here from /trades and the trades channel.
  const name = state.product;
  let rows = null;
  try {
    const res = await fetch("/products/" + encodeURIComponent(name) + "/candles?granularity=" + GRANULARITY);
    if (res.ok) {
      const body = await res.json();
      if (Array.isArray(body)) rows = body;
    }
  } catch (e) { rows = null; }
  if (name !== state.product) return;
  if (rows === null) {
    if (state.candleSource !== "trades") {
      state.candleSource = "trades";
      state.candles.clear();
      for (const t of state.trades) addToCandle(t);
    }
  } else {
    state.candleSource = "server";
    state.candles.clear();
    for (const r of rows) {
      const [t, l, h, o, c, v] = r.map(Number);
      state.candles.set(t, {t, o, h, l, c, v});
    }
  }
  $("candle-source").textContent = state.candleSource === "server"
    ? "GET /candles" : "built from trades";
  renderCandles();
}

function candlesChanged() {
  if (state.candleSource === "server") {          // refetch, at most ~3 times a second
    if (state.candleTimer) return;
    state.candleTimer = setTimeout(() => { state.candleTimer = null; loadCandles(); }, 300);
  } else {
    renderCandles();
  }
}

// ---------------------------------------------------------------- WebSocket
function wsUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
}
function send(msg) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(msg)); }
const MARKET = ["level2", "trades", "ticker"];

function subscribe() {
  state.l2seq = null;
  send({type: "subscribe", product_ids: [state.product], channels: MARKET});
}

function switchProduct(name) {
  send({type: "unsubscribe", product_ids: [state.product], channels: MARKET});
  state.product = name; state.bids.clear(); state.asks.clear();
  state.trades = []; state.tradeIds.clear(); state.minTradeId = 0; state.candles.clear(); state.candleSource = null;
  renderBook(); renderTrades(); renderCandles();
  subscribe();
  loadCandles().then(loadTrades);
  renderAccount();
  if (state.auth) scheduleRefresh();            // fills are per product
}

function connect() {
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onopen = () => {
    $("conn").textContent = "live"; $("conn").className = "badge live";
    subscribe();
    if (state.auth) subscribeUser();
    loadTrades();                                   // after subscribing: no gap (ids dedupe)
  };
  ws.onclose = () => {
    $("conn").textContent = "reconnecting"; $("conn").className = "badge";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
}

function onMessage(m) {
  if (m.type === "report") { onReport(m); return; }
  if (m.type === "error") {
    if (state.auth && /user|key/i.test((m.message || "") + (m.reason || ""))) {
      setAccountState("error", "user channel: " + (m.reason || m.message));
    }
    return;
  }
  if (m.product_id && m.product_id !== state.product) return;
  switch (m.type) {
    case "snapshot":
      state.bids = new Map(m.bids.map(([p, q]) => [p, q]));
      state.asks = new Map(m.asks.map(([p, q]) => [p, q]));
      state.l2seq = m.sequence;
      renderBook();
      break;
    case "l2update":
      if (state.l2seq === null) return;              // waiting for the snapshot
      if (m.sequence !== state.l2seq + 1) {           // gap: ask for a new snapshot
        state.l2seq = null;
        send({type: "subscribe", product_ids: [state.product], channels: ["level2"]});
        return;
      }
      state.l2seq = m.sequence;
      for (const [side, price, size] of m.changes) {
        const book = side === "buy" ? state.bids : state.asks;
        if (parseFloat(size) === 0) book.delete(price); else book.set(price, size);
      }
      renderBook();
      break;
    case "trades": {
      let added = false;
      for (const t of m.trades) added = addTrade(t) || added;
      if (state.trades.length > 6000) {               // keep 5000; older ones stay counted
        state.trades = state.trades.slice(-5000);
        state.minTradeId = state.trades[0].trade_id;
        state.tradeIds = new Set(state.trades.map((x) => x.trade_id));
      }
      if (added) { renderTrades(); candlesChanged(); }
      break;
    }
    case "ticker":
      $("ticker").textContent = "last " + (m.price || "-") + "  bid " + (m.best_bid || "-") +
        "  ask " + (m.best_ask || "-") + "  24h vol " + (m.volume_24h || "0");
      break;
    case "resync":
      state.l2seq = null;                             // fresh snapshots follow
      loadTrades();                                   // trades dropped meanwhile
      break;
  }
}

// ---------------------------------------------------------------- book, spread, trades
function sortedLevels(map, desc) {
  const rows = Array.from(map.entries());
  rows.sort((a, b) => desc ? parseFloat(b[0]) - parseFloat(a[0]) : parseFloat(a[0]) - parseFloat(b[0]));
  return rows;
}

function renderBook() {
  const allAsks = sortedLevels(state.asks, false), allBids = sortedLevels(state.bids, true);
  const asks = allAsks.slice(0, 15).reverse();
  const bids = allBids.slice(0, 15);
  const row = (side) => ([p, q]) =>
    '<tr class="level ' + side + '" data-price="' + esc(p) + '" data-size="' + esc(q) + '"><td>' +
    esc(p) + "</td><td>" + esc(q) + "</td></tr>";
  $("asks").innerHTML = asks.map(row("ask")).join("");
  $("bids").innerHTML = bids.map(row("bid")).join("");
  const cell = $("spread-cell");
  if (allBids.length && allAsks.length) {
    const tick = parseFloat(product().quote_increment || "0") || 0;
    let spread = parseFloat(allAsks[0][0]) - parseFloat(allBids[0][0]);
    if (tick > 0) spread = Math.round(spread / tick) * tick;   // a whole number of ticks
    cell.textContent = "spread " + spread.toFixed(priceDec());
    cell.dataset.spread = spread.toFixed(priceDec());
  } else {
    cell.textContent = "-";
    delete cell.dataset.spread;
  }
  $("book-seq").textContent = state.l2seq === null ? "" : "seq " + state.l2seq;
  renderDepth(allBids, allAsks);
}

function renderTrades() {
  const recent = state.trades.slice(-50).reverse();
  $("trades").innerHTML = recent.map((t) =>
    '<tr class="trade ' + esc(t.side) + '" data-trade-id="' + esc(t.trade_id) + '"><td>' +
    esc((t.time || "").slice(11, 19)) + "</td><td>" + esc(t.price) + "</td><td>" + esc(t.size) +
    '</td><td class="' + esc(t.side) + '">' + esc(t.side) + "</td></tr>").join("");
}

// ---------------------------------------------------------------- charts (SVG)
const SVGNS = "http://www.w3.org/2000/svg";

function boxWidth(id) { return Math.max(200, Math.floor($(id).clientWidth || 300)); }

function hhmm(epoch) { return new Date(epoch * 1000).toISOString().slice(11, 16); }

function renderCandles() {
  const svg = $("candles");
  const W = boxWidth("candles-box"), H = W < 500 ? 200 : 260;
  const padR = 58, padB = 18, padT = 8, plotW = W - padR - 4, plotH = H - padT - padB;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  const slot = 10, n = Math.max(5, Math.floor(plotW / slot));
  const all = Array.from(state.candles.values()).sort((a, b) => a.t - b.t);
  const now = Math.floor(Date.now() / 1000 / GRANULARITY) * GRANULARITY;
  const tEnd = Math.max(now, all.length ? all[all.length - 1].t : 0);
  const t0 = tEnd - (n - 1) * GRANULARITY;
  const shown = all.filter((c) => c.t >= t0);
  svg.dataset.count = String(shown.length);
  const parts = [];
  let lo = Infinity, hi = -Infinity;
  for (const c of shown) { lo = Math.min(lo, c.l); hi = Math.max(hi, c.h); }
  if (!shown.length) { lo = 0; hi = 1; }
  if (hi === lo) { const pad = Math.max(Math.abs(hi) * 0.001, parseFloat(product().quote_increment || "1")); hi += pad; lo -= pad; }
  const y = (p) => padT + (hi - p) / (hi - lo) * plotH;
  const x = (t) => 2 + ((t - t0) / GRANULARITY + 0.5) * (plotW / n);
  // price grid and labels
  for (let i = 0; i <= 4; i++) {
    const p = lo + (hi - lo) * i / 4, yy = y(p).toFixed(1);
    parts.push('<line class="grid" x1="0" x2="' + plotW + '" y1="' + yy + '" y2="' + yy + '"/>');
    parts.push('<text x="' + (plotW + 4) + '" y="' + (Number(yy) + 3) + '">' + esc(fmtPrice(p)) + "</text>");
  }
  // time axis: a label every k minutes, at least ~60 px apart
  const per = plotW / n, steps = [1, 2, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440];
  const k = steps.find((s) => s * per >= 60) || 1440;
  for (let t = Math.ceil(t0 / (k * 60)) * k * 60; t <= tEnd; t += k * 60) {
    const xx = x(t).toFixed(1);
    parts.push('<line class="grid" x1="' + xx + '" x2="' + xx + '" y1="' + padT + '" y2="' + (padT + plotH) + '"/>');
    parts.push('<text class="time-label" x="' + xx + '" y="' + (H - 4) + '" text-anchor="middle">' + hhmm(t) + "</text>");
  }
  parts.push('<text x="' + (plotW + 4) + '" y="' + (H - 4) + '">UTC</text>');
  const bw = Math.max(1, per * 0.7);
  for (const c of shown) {
    const cls = c.c >= c.o ? "up" : "down", xx = x(c.t);
    const yo = y(c.o), yc = y(c.c), top = Math.min(yo, yc), h = Math.max(1, Math.abs(yo - yc));
    parts.push('<g class="candle ' + cls + '" data-time="' + new Date(c.t * 1000).toISOString() +
      '" data-start="' + c.t + '" data-open="' + fmtPrice(c.o) + '" data-high="' + fmtPrice(c.h) +
      '" data-low="' + fmtPrice(c.l) + '" data-close="' + fmtPrice(c.c) + '" data-volume="' + fmtSize(c.v) +
      '"><title>' + hhmm(c.t) + " O " + fmtPrice(c.o) + " H " + fmtPrice(c.h) + " L " + fmtPrice(c.l) +
      " C " + fmtPrice(c.c) + " V " + fmtSize(c.v) + "</title>" +
      '<line x1="' + xx.toFixed(1) + '" x2="' + xx.toFixed(1) + '" y1="' + y(c.h).toFixed(1) +
      '" y2="' + y(c.l).toFixed(1) + '"/>' +
      '<rect x="' + (xx - bw / 2).toFixed(1) + '" y="' + top.toFixed(1) + '" width="' + bw.toFixed(1) +
      '" height="' + h.toFixed(1) + '"/></g>');
  }
  if (!shown.length) {
    parts.push('<text x="' + (plotW / 2) + '" y="' + (H / 2) + '" text-anchor="middle">no trades in this window</text>');
  }
  svg.innerHTML = parts.join("");
}

function renderDepth(bids, asks) {
  const svg = $("depth");
  const W = boxWidth("depth-box"), H = W < 500 ? 150 : 180;
  const padB = 18, padT = 8, plotW = W - 4, plotH = H - padT - padB;
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  bids = bids || sortedLevels(state.bids, true);
  asks = asks || sortedLevels(state.asks, false);
  const cum = (levels) => {
    let s = 0;
    return levels.slice(0, 100).map(([p, q]) => { s += parseFloat(q); return [parseFloat(p), s]; });
  };
  const cb = cum(bids), ca = cum(asks);
  if (cb.length) svg.dataset.bestBid = bids[0][0]; else delete svg.dataset.bestBid;
  if (ca.length) svg.dataset.bestAsk = asks[0][0]; else delete svg.dataset.bestAsk;
  svg.dataset.bidDepth = cb.length ? fmtSize(cb[cb.length - 1][1]) : "0";
  svg.dataset.askDepth = ca.length ? fmtSize(ca[ca.length - 1][1]) : "0";
  if (!cb.length && !ca.length) {
    svg.innerHTML = '<text x="' + (W / 2) + '" y="' + (H / 2) + '" text-anchor="middle">empty book</text>';
    return;
  }
  const prices = cb.map((r) => r[0]).concat(ca.map((r) => r[0]));
  let lo = Math.min(...prices), hi = Math.max(...prices);
  if (cb.length && ca.length) {          // symmetric around the mid
    const mid = (cb[0][0] + ca[0][0]) / 2, half = Math.max(mid - lo, hi - mid);
    lo = mid - half; hi = mid + half;
  }
  if (hi === lo) { const pad = Math.max(Math.abs(hi) * 0.001, 1e-9); hi += pad; lo -= pad; }
  const margin = (hi - lo) * 0.08;       // the outermost levels' steps stay visible
  lo -= margin; hi += margin;
  const maxQ = Math.max(cb.length ? cb[cb.length - 1][1] : 0, ca.length ? ca[ca.length - 1][1] : 0) || 1;
  const x = (p) => 2 + (p - lo) / (hi - lo) * (plotW - 4);
  const y = (q) => padT + plotH - q / maxQ * plotH;
  const area = (rows, edge) => {
    if (!rows.length) return "";
    let d = "M" + x(rows[0][0]).toFixed(1) + "," + y(0).toFixed(1);
    let prev = 0;
    for (const [p, s] of rows) {
      d += " L" + x(p).toFixed(1) + "," + y(prev).toFixed(1) + " L" + x(p).toFixed(1) + "," + y(s).toFixed(1);
      prev = s;
    }
    d += " L" + x(edge).toFixed(1) + "," + y(prev).toFixed(1) + " L" + x(edge).toFixed(1) + "," + y(0).toFixed(1) + " Z";
    return d;
  };
  const parts = [];
  parts.push('<line class="grid" x1="0" x2="' + W + '" y1="' + y(0).toFixed(1) + '" y2="' + y(0).toFixed(1) + '"/>');
  if (cb.length) parts.push('<path class="bid-area" d="' + area(cb, lo) + '"/>');
  if (ca.length) parts.push('<path class="ask-area" d="' + area(ca, hi) + '"/>');
  if (cb.length && ca.length) {
    const xm = x((cb[0][0] + ca[0][0]) / 2).toFixed(1);
    parts.push('<line class="mid" x1="' + xm + '" x2="' + xm + '" y1="' + padT + '" y2="' + y(0).toFixed(1) + '"/>');
  }
  parts.push('<text x="2" y="' + (H - 4) + '">' + esc(fmtPrice(lo)) + "</text>");
  parts.push('<text x="' + (W - 2) + '" y="' + (H - 4) + '" text-anchor="end">' + esc(fmtPrice(hi)) + "</text>");
  parts.push('<text x="' + (W / 2) + '" y="' + (H - 4) + '" text-anchor="middle">bid ' +
    esc(cb.length ? bids[0][0] : "-") + " / ask " + esc(ca.length ? asks[0][0] : "-") + "</text>");
  parts.push('<text x="2" y="' + (padT + 10) + '">' + esc(fmtSize(maxQ)) + "</text>");
  svg.innerHTML = parts.join("");
}

// ---------------------------------------------------------------- signing
async function hmacSign(keyBytes, message) {
  const key = await crypto.subtle.importKey("raw", keyBytes, {name: "HMAC", hash: "SHA-256"},
    false, ["sign"]);
  const sig = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(message)));
  let bin = ""; sig.forEach((b) => { bin += String.fromCharCode(b); });
  return btoa(bin);
}

function credentials() {
  return {key: $("api-key").value.trim(), secret: $("api-secret").value,
          passphrase: $("api-passphrase").value};
}

// Two schemes (docs/api.md): with a passphrase Coinbase Exchange's CB-ACCESS-* (secret
// base64-decoded), else RM-ACCESS-* (secret as UTF-8); both sign ts + METHOD + path?query + body.
async function signHeaders(cred, method, path, body) {
  const ts = (Date.now() / 1000).toFixed(3);
  const message = ts + method + path + body;
  if (cred.passphrase) {
    const raw = Uint8Array.from(atob(cred.secret), (c) => c.charCodeAt(0));
    return {"CB-ACCESS-KEY": cred.key, "CB-ACCESS-TIMESTAMP": ts, "CB-ACCESS-PASSPHRASE": cred.passphrase,
            "CB-ACCESS-SIGN": await hmacSign(raw, message)};
  }
  return {"RM-ACCESS-KEY": cred.key, "RM-ACCESS-TIMESTAMP": ts,
          "RM-ACCESS-SIGN": await hmacSign(new TextEncoder().encode(cred.secret), message)};
}

async function signedFetch(method, path, bodyObj, cred) {
  const body = bodyObj === undefined ? "" : JSON.stringify(bodyObj);
  const headers = await signHeaders(cred || credentials(), method, path, body);
  if (body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {method, headers, body: body || undefined});
  let parsed = null;
  try { parsed = await res.json(); } catch (e) { parsed = {message: res.statusText}; }
  return {status: res.status, body: parsed};
}

async function subscribeUser() {
  const a = state.auth, ts = (Date.now() / 1000).toFixed(3);
  const msg = {type: "subscribe", channels: ["user"], key: a.key, timestamp: ts};
  if (a.passphrase) {
    const raw = Uint8Array.from(atob(a.secret), (c) => c.charCodeAt(0));
    msg.passphrase = a.passphrase;
    msg.signature = await hmacSign(raw, ts + "GET" + "/users/self/verify");
  } else {
    msg.signature = await hmacSign(new TextEncoder().encode(a.secret), ts + "GET" + "/ws");
  }
  send(msg);
}

// ---------------------------------------------------------------- the user's account
function setAccountState(kind, text) {
  const el = $("account-state");
  el.textContent = text; el.dataset.state = kind;
}

async function useKey(ev) {
  if (ev) ev.preventDefault();
  const cred = credentials();
  if (!cred.key || !cred.secret) { setAccountState("error", "give a key and its secret"); return; }
  state.auth = cred; state.userSeq = 0; state.sessionFills = []; state.fillsFromRest = null;
  const ok = await refreshAccount();
  if (ok) subscribeUser();
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; refreshAccount(); }, 150);
}

async function refreshAccount() {
  const a = state.auth;
  if (!a) return false;
  const seq = state.userSeq ? "min_seq=" + state.userSeq : "";   // read-your-writes
  const [acc, orders] = await Promise.all([
    signedFetch("GET", "/accounts" + (seq ? "?" + seq : ""), undefined, a),
    signedFetch("GET", "/orders?status=open" + (seq ? "&" + seq : ""), undefined, a)]);
  if (a !== state.auth) return false;
  if (acc.status !== 200) {
    setAccountState("error", "HTTP " + acc.status + ": " + (acc.body && acc.body.message));
    return false;
  }
  state.balances = acc.body;
  state.openOrders = orders.status === 200 ? orders.body : [];
  if (state.fillsFromRest !== false) {     // GET /fills where the server has it
    const f = await signedFetch("GET", "/fills?product_id=" + encodeURIComponent(state.product) +
                                "&limit=100" + (seq ? "&" + seq : ""), undefined, a);
    if (f.status === 200 && Array.isArray(f.body)) { state.fillsFromRest = true; state.fills = f.body; }
    else if (f.status === 404 || f.status === 405) state.fillsFromRest = false;
  }
  const account = acc.body.length ? acc.body[0].account_id : "?";
  setAccountState("ok", "key " + a.key + ", account " + account);
  renderAccount();
  return true;
}

function onReport(m) {
  if (typeof m.input_seq === "number" && m.input_seq > state.userSeq) state.userSeq = m.input_seq;
  if (m.event === "fill") {
    state.sessionFills.unshift({trade_id: m.trade_id, order_id: m.order_id, product_id: m.product_id,
      side: m.side, price: m.price, size: m.size, fee: m.fee, fee_currency: m.fee_currency,
      liquidity: m.liquidity, created_at: m.created_at || m.time});
    state.sessionFills = state.sessionFills.slice(0, 200);
  }
  scheduleRefresh();
}

function renderAccount() {
  $("balances").innerHTML = state.balances.map((b) =>
    '<tr class="balance" data-currency="' + esc(b.currency) + '" data-balance="' + esc(b.balance) +
    '" data-available="' + esc(b.available) + '" data-hold="' + esc(b.hold) + '"><td>' + esc(b.currency) +
    "</td><td>" + esc(b.balance) + "</td><td>" + esc(b.available) + "</td><td>" + esc(b.hold) +
    "</td></tr>").join("") || '<tr><td colspan="4" class="empty">-</td></tr>';
  $("open-orders").innerHTML = state.openOrders.map((o) =>
    '<tr class="open-order" data-id="' + esc(o.id) + '" data-product="' + esc(o.product_id) +
    '" data-side="' + esc(o.side) + '" data-price="' + esc(o.price) + '" data-size="' + esc(o.size) +
    '" data-filled="' + esc(o.filled_size) + '"><td class="' + esc(o.side) + '">' + esc(o.side) + " " +
    esc(o.product_id) + "</td><td>" + esc(o.price || "market") + "</td><td>" + esc(o.size) + "</td><td>" +
    esc(o.filled_size) + '</td><td><button type="button" class="cancel" data-id="' + esc(o.id) +
    '">Cancel</button></td></tr>').join("") || '<tr><td colspan="5" class="empty">no open orders</td></tr>';
  const fills = state.fillsFromRest ? state.fills
    : state.sessionFills.filter((f) => f.product_id === state.product);
  $("fills-source").textContent = state.auth ? (state.fillsFromRest ? state.product
    : state.product + ", since the key was entered (no GET /fills here)") : "";
  $("fills").innerHTML = fills.slice(0, 100).map((f) =>
    '<tr class="fill" data-trade-id="' + esc(f.trade_id) + '" data-order-id="' + esc(f.order_id) +
    '" data-price="' + esc(f.price) + '" data-size="' + esc(f.size) + '"><td>' +
    esc(String(f.created_at || "").slice(11, 19)) + '</td><td class="' + esc(f.side) + '">' + esc(f.side) +
    "</td><td>" + esc(f.price) + "</td><td>" + esc(f.size) + "</td><td>" + esc(f.fee) + "</td></tr>")
    .join("") || '<tr><td colspan="5" class="empty">no fills</td></tr>';
}

async function cancelOrder(id, button) {
  button.disabled = true;
  const r = await signedFetch("DELETE", "/orders/" + encodeURIComponent(id), undefined, state.auth);
  $("order-result").textContent = r.status === 200 ? "order " + id + " canceled"
    : "cancel " + id + ": HTTP " + r.status + ": " + (r.body && r.body.message);
  $("order-result").dataset.status = String(r.status);
  if (r.body && typeof r.body.seq === "number" && r.body.seq > state.userSeq) state.userSeq = r.body.seq;
  button.disabled = false;
  refreshAccount();
}

async function placeOrder(ev) {
  ev.preventDefault();
  const order = {product_id: state.product, side: $("side").value, type: $("type").value, size: $("size").value};
  if (order.type === "limit") order.price = $("price").value;
  const r = await signedFetch("POST", "/orders", order);
  const b = r.body;
  $("order-result").textContent = r.status === 200
    ? "order " + b.id + " " + b.status + ", filled " + b.filled_size + " (" + b.fills.length + " fills)"
    : "HTTP " + r.status + ": " + b.message;
  $("order-result").dataset.status = String(r.status);
  if (state.auth) scheduleRefresh();
}

window.ringmatch = {state, signedFetch};

(async () => {
  $("order-form").addEventListener("submit", placeOrder);
  $("key-form").addEventListener("submit", useKey);
  $("open-orders").addEventListener("click", (ev) => {
    const b = ev.target.closest("button.cancel");
    if (b && state.auth) cancelOrder(b.dataset.id, b);
  });
  await loadProducts();
  renderAccount();
  await loadCandles();
  connect();
  if (window.ResizeObserver) {
    const ro = new ResizeObserver(() => { renderCandles(); renderDepth(); });
    ro.observe($("candles-box")); ro.observe($("depth-box"));
  }
  setInterval(renderCandles, 15000);          // the time axis moves on without trades
})();
