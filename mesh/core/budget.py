"""Per-agent budgets: daily caps and, optionally, balances funded by deposits.

The book is pure state with no clock and no I/O: callers pass the day. Caps count
``released + locked`` per source agent per day; a lock takes room, a refund gives it
back (on the day the lock was taken), a new day starts empty. With balances on,
every source must hold the funds it locks, and at every step::

    sum(balances) + sum(locked) == sum(deposits) + transfers_in - transfers_out

A book that holds only some agents (a budget shard) is told which it owns
(``owns_agent``): a release to an agent it does not own sends the amount out
(``transfers_out_micros``) for the owner's book to :meth:`BudgetBook.credit`.
In a single book both transfer totals stay 0.

>>> book = BudgetBook(default_cap_micros=10, track_balances=True)
>>> book.deposit("alice", 8)
>>> book.room_check("alice", 9, day=0)
<Reason.INSUFFICIENT_FUNDS: 'insufficient_funds'>
>>> period = book.reserve("alice", 5, day=0); book.commit("alice", "bob", 5)
>>> book.balance_micros("bob"), book.used_micros("alice", day=0)
(5, 5)
"""

from __future__ import annotations

from typing import Callable, Optional

from mesh.core.records import Reason


class BudgetBook:
    """Daily caps and balances for many agents; every mutation keeps the invariants."""

    def __init__(
        self,
        *,
        default_cap_micros: Optional[int],
        track_balances: bool = False,
        owns_agent: Optional[Callable[[str], bool]] = None,
    ) -> None:
        self.default_cap_micros = default_cap_micros
        self.track_balances = track_balances
        self.owns_agent = owns_agent  # None: this book holds every agent
        self._caps: dict[str, Optional[int]] = {}
        self._usage: dict[str, list] = {}  # agent -> [period, used_micros]
        self._epoch = 0  # bumped by reset_usage, so refunds of older locks give no room back
        self._balances: dict[str, int] = {}
        self._locked: dict[str, int] = {}
        self.deposits_total_micros = 0
        self.balances_total_micros = 0
        self.locked_total_micros = 0
        self.transfers_in_micros = 0
        self.transfers_out_micros = 0

    # -- caps -----------------------------------------------------------------

    def cap_micros(self, agent: str) -> Optional[int]:
        """The agent's daily cap; None means no cap."""
        return self._caps.get(agent, self.default_cap_micros)

    def set_cap(self, agent: str, cap_micros: Optional[int]) -> None:
        self._caps[agent] = cap_micros

    def period(self, day: int) -> tuple[int, int]:
        """The cap period of ``day``: the day, and how many manual resets came before."""
        return (day, self._epoch)

    def used_micros(self, agent: str, day: int) -> int:
        """Released + locked by ``agent`` on ``day`` (since the last reset)."""
        usage = self._usage.get(agent)
        return usage[1] if usage is not None and usage[0] == (day, self._epoch) else 0

    def usage_on(self, day: int) -> dict[str, int]:
        """Every agent with room used on ``day`` (since the last reset)."""
        period = (day, self._epoch)
        return {a: u[1] for a, u in self._usage.items() if u[0] == period and u[1]}

    def reset_usage(self) -> None:
        """Forget all daily usage (the seed's manual ``reset_daily``)."""
        self._usage.clear()
        self._epoch += 1

    # -- balances -------------------------------------------------------------

    def has_account(self, agent: str) -> bool:
        return agent in self._balances

    def balance_micros(self, agent: str) -> int:
        return self._balances.get(agent, 0)

    def locked_micros(self, agent: str) -> int:
        return self._locked.get(agent, 0)

    def balances(self) -> dict[str, int]:
        return dict(self._balances)

    def deposit(self, agent: str, amount_micros: int) -> None:
        """Add funds to ``agent`` (opening its account if needed)."""
        self._balances[agent] = self._balances.get(agent, 0) + amount_micros
        self.balances_total_micros += amount_micros
        self.deposits_total_micros += amount_micros
        self._assert_conserved()

    # -- the escrow moves -----------------------------------------------------

    def room_check(self, agent: str, amount_micros: int, day: int) -> Optional[Reason]:
        """Why ``agent`` may not lock ``amount_micros`` on ``day``, or None if it may."""
        if self.track_balances:
            if agent not in self._balances:
                return Reason.UNKNOWN_AGENT
            if self._balances[agent] < amount_micros:
                return Reason.INSUFFICIENT_FUNDS
        cap = self.cap_micros(agent)
        if cap is not None and self.used_micros(agent, day) + amount_micros > cap:
            return Reason.OVER_DAILY_CAP
        return None

    def reserve(self, agent: str, amount_micros: int, day: int, *, check_cap: bool = True) -> tuple[int, int]:
        """Lock ``amount_micros`` of ``agent``'s room (and funds) on ``day``; return the cap period.

        ``check_cap=False``: a lock a ledger holds, taken under the cap of its day (a replay does not judge it again).
        """
        period = (day, self._epoch)
        usage = self._usage.get(agent)
        if usage is None or usage[0] != period:
            self._usage[agent] = usage = [period, 0]
        usage[1] += amount_micros
        cap = self.cap_micros(agent)
        assert not check_cap or cap is None or usage[1] <= cap, f"cap exceeded for {agent!r}"
        if amount_micros:
            self._locked[agent] = self._locked.get(agent, 0) + amount_micros
            self.locked_total_micros += amount_micros
        if self.track_balances:
            self._balances[agent] -= amount_micros
            self.balances_total_micros -= amount_micros
            assert self._balances[agent] >= 0, f"negative balance for {agent!r}"
        self._assert_conserved()
        return period

    def commit(self, source: str, target: str, amount_micros: int) -> None:
        """Move a locked amount from ``source`` to ``target`` (a release).

        If another book owns ``target``, the amount leaves this one (``transfers_out_micros``).
        """
        self._unlock(source, amount_micros)
        if self.track_balances:
            if self.owns_agent is None or self.owns_agent(target):
                self._balances[target] = self._balances.get(target, 0) + amount_micros
                self.balances_total_micros += amount_micros
            else:
                self.transfers_out_micros += amount_micros
        self._assert_conserved()

    def credit(self, agent: str, amount_micros: int) -> None:
        """Receive a release another book sent out to ``agent`` (see :meth:`commit`)."""
        if not self.track_balances:
            return
        self._balances[agent] = self._balances.get(agent, 0) + amount_micros
        self.balances_total_micros += amount_micros
        self.transfers_in_micros += amount_micros
        self._assert_conserved()

    def rollback(self, source: str, amount_micros: int, period: tuple[int, int]) -> None:
        """Give a locked amount back to ``source`` and its room back to the cap ``period`` it was taken in."""
        self._unlock(source, amount_micros)
        usage = self._usage.get(source)
        if usage is not None and usage[0] == period:
            usage[1] -= amount_micros
            assert usage[1] >= 0, f"negative usage for {source!r}"
        if self.track_balances:
            self._balances[source] += amount_micros
            self.balances_total_micros += amount_micros
        self._assert_conserved()

    def _unlock(self, agent: str, amount_micros: int) -> None:
        if not amount_micros:
            return
        left = self._locked[agent] - amount_micros
        assert left >= 0, f"negative locked amount for {agent!r}"
        if left:
            self._locked[agent] = left
        else:
            del self._locked[agent]
        self.locked_total_micros -= amount_micros

    def _assert_conserved(self) -> None:
        if self.track_balances:
            held = self.balances_total_micros + self.locked_total_micros
            funded = self.deposits_total_micros + self.transfers_in_micros - self.transfers_out_micros
            assert held == funded, "conservation broken"
