"""Accounts: available and held balance per account per asset, integer minor units.

Each :class:`Account` keeps its balances in one flat list ``bal`` where asset index
``i`` (``Accounts.index[asset_id] == 2 * i``) has ``bal[2*i]`` = available and
``bal[2*i + 1]`` = held.  The matcher indexes that list directly on the hot path.
An account also counts its live orders (``n_orders``: resting and waiting stops)
and indexes them by client order id (``by_coid``: client order id -> Order, non-zero
ids only).  It keeps no per-account order index: on PyPy, storing every new order
into one of 1000 per-account containers cost ~35% of the matcher's time on the
benchmark workload; ``Matcher._orders_of`` finds an account's orders by scanning the
matcher's live orders (mass cancel, tools).

Invariants (``_check``): no balance is negative; per asset, the sum of available +
held over all accounts (fee account included) equals ``supply`` (deposits minus
withdrawals).  Whether holds equal what open orders need is checked by the matcher,
which knows the orders (``Matcher._check``).

Example::

    >>> accts = Accounts([1, 2], fee_account_id=0)
    >>> a = accts.create(7)
    >>> accts.deposit(a, 1, 500); accts.balance(7, 1)
    (500, 0)
"""

__all__ = ["Account", "Accounts"]


class Account(object):
    __slots__ = ("account_id", "bal", "n_orders", "by_coid")

    def __init__(self, account_id, n_assets):
        self.account_id = account_id
        self.bal = [0] * (2 * n_assets)
        self.n_orders = 0
        self.by_coid = {}


class Accounts(object):
    """All accounts of one matcher; the fee account exists from the start."""

    def __init__(self, asset_ids, fee_account_id=0):
        self.asset_ids = list(asset_ids)
        self.index = dict((aid, 2 * i) for i, aid in enumerate(self.asset_ids))
        self.n_assets = len(self.asset_ids)
        self.supply = [0] * self.n_assets
        self.fee_account_id = fee_account_id
        self.accounts = {}
        self.fee_account = self.create(fee_account_id)

    def get(self, account_id):
        """Account or None.  O(1)."""
        return self.accounts.get(account_id)

    def create(self, account_id):
        acct = Account(account_id, self.n_assets)
        self.accounts[account_id] = acct
        return acct

    def deposit(self, acct, asset_id, amount):
        i = self.index[asset_id]
        acct.bal[i] += amount
        self.supply[i >> 1] += amount

    def withdraw(self, acct, asset_id, amount):
        i = self.index[asset_id]
        acct.bal[i] -= amount
        self.supply[i >> 1] -= amount

    def balance(self, account_id, asset_id):
        """``(available, held)``; (0, 0) for an unknown account.  O(1)."""
        acct = self.accounts.get(account_id)
        if acct is None:
            return (0, 0)
        i = self.index[asset_id]
        return (acct.bal[i], acct.bal[i + 1])

    def sorted_ids(self):
        return sorted(self.accounts)

    def _check(self):
        """Assert no negative balance and per-asset conservation."""
        totals = [0] * self.n_assets
        for acct in self.accounts.values():
            bal = acct.bal
            for j, value in enumerate(bal):
                assert value >= 0, "account %d asset %d %s negative: %d" % (
                    acct.account_id, self.asset_ids[j >> 1], "held" if j & 1 else "available",
                    value)
                totals[j >> 1] += value
            assert acct.n_orders >= len(acct.by_coid)
            for coid, order in acct.by_coid.items():
                assert coid and order.client_order_id == coid
                assert order.account_id == acct.account_id
        assert totals == self.supply, "asset totals %r != deposits-withdrawals %r" % (
            totals, self.supply)
