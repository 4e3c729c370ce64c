// ringmatch live page: book ladder, trades, price chart over /ws; orders via signed REST.
// Plain JS, no build step.  Protocol: docs/publisher.md.
"use strict";

const state = {
  product: null, ws: null, bids: new Map(), asks: new Map(), l2seq: null,
  trades: [], prices: [], resubscribing: false,
};
const $ = (id) => document.getElementById(id);

function wsUrl() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
}

async function loadProducts() {
  const res = await fetch("/products");
  const products = await res.json();
  const sel = $("product");
  sel.innerHTML = "";
  for (const p of products) {
    const o = document.createElement("option");
    o.value = p.id; o.textContent = p.id;
    sel.appendChild(o);
  }
  const wanted = new URLSearchParams(location.search).get("product");
  if (wanted) sel.value = wanted;
  state.product = sel.value;
  sel.addEventListener("change", () => { switchProduct(sel.value); });
}

async function loadTrades() {
  const res = await fetch("/products/" + state.product + "/trades?limit=100");
  const trades = await res.json();
  state.trades = trades.slice(0, 50);
  state.prices = trades.slice().reverse().map((t) => parseFloat(t.price));
  renderTrades(); renderChart();
}

function send(msg) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(msg)); }

function subscribe() {
  state.l2seq = null;
  send({type: "subscribe", product_ids: [state.product], channels: ["level2", "trades", "ticker"]});
}

function switchProduct(name) {
  send({type: "unsubscribe", product_ids: [state.product], channels: ["level2", "trades", "ticker"]});
  state.product = name; state.bids.clear(); state.asks.clear();
  renderBook(); loadTrades(); subscribe();
}

function connect() {
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge live"; subscribe(); };
  ws.onclose = () => {
    $("conn").textContent = "reconnecting"; $("conn").className = "badge";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
}

function onMessage(m) {
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
    case "trades":
      for (const t of m.trades) {
        state.trades.unshift(t);
        state.prices.push(parseFloat(t.price));
      }
      state.trades = state.trades.slice(0, 50);
      if (state.prices.length > 500) state.prices = state.prices.slice(-500);
      renderTrades(); renderChart();
      break;
    case "ticker":
      $("ticker").textContent = "last " + (m.price || "-") + "  bid " + (m.best_bid || "-") +
        "  ask " + (m.best_ask || "-") + "  24h vol " + (m.volume_24h || "0");
      break;
    case "resync":
      state.l2seq = null;                             // fresh snapshots follow
      break;
  }
}

function sortedLevels(map, desc) {
  const rows = Array.from(map.entries());
  rows.sort((a, b) => desc ? parseFloat(b[0]) - parseFloat(a[0]) : parseFloat(a[0]) - parseFloat(b[0]));
  return rows;
}

function renderBook() {
  const asks = sortedLevels(state.asks, false).slice(0, 15).reverse();
  const bids = sortedLevels(state.bids, true).slice(0, 15);
  const row = (side) => ([p, q]) =>
    '<tr class="level ' + side + '" data-price="' + p + '" data-size="' + q + '"><td>' + p +
    "</td><td>" + q + "</td></tr>";
  $("asks").innerHTML = asks.map(row("ask")).join("");
  $("bids").innerHTML = bids.map(row("bid")).join("");
  const bb = bids.length ? parseFloat(bids[0][0]) : null;
  const ba = asks.length ? parseFloat(asks[asks.length - 1][0]) : null;
  $("spread-cell").textContent = (bb !== null && ba !== null) ? "spread " + (ba - bb).toPrecision(6) : "-";
  $("book-seq").textContent = state.l2seq === null ? "" : "seq " + state.l2seq;
}

function renderTrades() {
  $("trades").innerHTML = state.trades.map((t) =>
    '<tr class="trade ' + t.side + '"><td>' + (t.time || "").slice(11, 23) + "</td><td>" + t.price +
    "</td><td>" + t.size + '</td><td class="' + t.side + '">' + t.side + "</td></tr>").join("");
}

function renderChart() {
  const c = $("chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const ps = state.prices;
  if (ps.length < 2) return;
  let lo = Math.min(...ps), hi = Math.max(...ps);
  if (hi === lo) { hi += 1; lo -= 1; }
  g.strokeStyle = "#6ab0ff"; g.lineWidth = 1.5; g.beginPath();
  ps.forEach((p, i) => {
    const x = (i / (ps.length - 1)) * (c.width - 50) + 5;
    const y = c.height - 10 - ((p - lo) / (hi - lo)) * (c.height - 20);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#889"; g.font = "11px sans-serif";
  g.fillText(String(hi), c.width - 44, 12); g.fillText(String(lo), c.width - 44, c.height - 4);
}

async function hmacSign(secret, message) {
  const enc = new TextEncoder();
  const key = await crypto.subtle.importKey("raw", enc.encode(secret), {name: "HMAC", hash: "SHA-256"},
    false, ["sign"]);
  const sig = new Uint8Array(await crypto.subtle.sign("HMAC", key, enc.encode(message)));
  let bin = ""; sig.forEach((b) => { bin += String.fromCharCode(b); });
  return btoa(bin);
}

async function signedFetch(method, path, bodyObj) {
  const body = bodyObj === undefined ? "" : JSON.stringify(bodyObj);
  const ts = (Date.now() / 1000).toFixed(3);
  const sign = await hmacSign($("api-secret").value, ts + method + path + body);
  const headers = {"RM-ACCESS-KEY": $("api-key").value, "RM-ACCESS-TIMESTAMP": ts, "RM-ACCESS-SIGN": sign};
  if (body) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {method, headers, body: body || undefined});
  return {status: res.status, body: await res.json()};
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
}

window.ringmatch = {state, signedFetch};

(async () => {
  $("order-form").addEventListener("submit", placeOrder);
  await loadProducts();
  await loadTrades();
  connect();
})();
