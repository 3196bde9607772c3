"""The Fraud Detection Handbook transaction simulator, re-implemented vectorised and seeded.

Le Borgne et al., *Reproducible Machine Learning for Credit Card Fraud Detection -- Practical
Handbook*, chapter 3 ("Transaction data simulator"). The generative story is the handbook's:

- customers at uniform (x, y) in a 100 x 100 square, each with a mean amount U(5, 100), std = mean/2
  and a mean number of transactions per day U(0, 4);
- terminals at uniform (x, y); a customer pays only at terminals within radius ``r`` (5);
- per customer and day, Poisson(mean_nb_tx_per_day) transactions, time of day N(43200 s, 20000 s)
  (draws outside the day are dropped), amount N(mean, std) (negative draws -> U(0, 2 mean)),
  a terminal drawn uniformly from the customer's reachable terminals;
- fraud scenario 1: every amount above 220 is fraud;
- fraud scenario 2: every day, 2 random terminals are compromised for the next 28 days: all their
  transactions are fraud;
- fraud scenario 3: every day, 3 random customers are compromised for the next 14 days: a third of
  their transactions get 5x the amount and are fraud.

The handbook loops per customer and per day in Python (75 s for the default 1.75 M rows); here every
step is a numpy array operation and the only Python loops are over days (183) for scenarios 2 and 3.
The random streams differ from the handbook's, so rows are not bit-identical; the statistics are.

Run: ``mlsd fraud simulate --out .mlsd/datasets/fraud`` (or ``python -m systems.fraud.data``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# 2018-04-01 00:00:00 UTC, the handbook's start date, as unix seconds. Day boundaries are UTC.
START_EPOCH_S = 1522540800
SECONDS_PER_DAY = 86_400

TX_COLUMNS = [
    "tx_id",  # int64, dense 0..n-1 in time order
    "ts_s",  # int64, unix seconds (event time)
    "day",  # int32, days since the start date
    "customer_id",  # int32
    "terminal_id",  # int32
    "amount",  # float64, 2 decimals
    "fraud",  # int8, 0/1
    "scenario",  # int8, 0 = genuine, 1/2/3 = fraud scenario
]


@dataclass(kw_only=True, frozen=True)
class SimulatorConfig:
    """Simulator parameters; the defaults are the handbook's."""

    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 183
    radius: float = 5.0  # customers use terminals within this distance (same units as the 100x100 map)
    amount_threshold: float = 220.0  # scenario 1
    compromised_terminals_per_day: int = 2  # scenario 2
    terminal_compromise_days: int = 28
    compromised_customers_per_day: int = 3  # scenario 3
    customer_compromise_days: int = 14
    amount_multiplier: float = 5.0  # scenario 3
    seed: int = 0


def handbook() -> SimulatorConfig:
    """The handbook's default dataset: ~1.75 M transactions, ~0.84 % fraud."""
    return SimulatorConfig()


def small(seed: int = 0) -> SimulatorConfig:
    """A test-sized dataset (~60 k transactions) with the handbook's fraud *rates* kept roughly constant.

    Compromise counts are per day, so they are scaled down with the population: 1 terminal in 2,000
    (handbook: 2 in 10,000) and 1 customer in 1,000 (handbook: 3 in 5,000) per day.
    """
    return SimulatorConfig(
        n_customers=1_000,
        n_terminals=2_000,
        n_days=60,
        compromised_terminals_per_day=1,
        compromised_customers_per_day=1,
        seed=seed,
    )


@dataclass
class SimulatedData:
    customers: pd.DataFrame  # customer_id, x, y, mean_amount, std_amount, mean_nb_tx_per_day, n_terminals
    terminals: pd.DataFrame  # terminal_id, x, y
    transactions: pd.DataFrame  # TX_COLUMNS, sorted by ts_s
    config: SimulatorConfig
    seconds: float  # wall time of simulate()

    @property
    def fraud_rate(self) -> float:
        return float(self.transactions["fraud"].mean())


def _reachable_terminals(cust_xy: np.ndarray, term_xy: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of terminals within ``radius`` of each customer: (indptr (C+1,), indices (nnz,))."""
    from scipy.spatial import cKDTree

    tree = cKDTree(term_xy)
    # return_sorted keeps each customer's list in terminal-id order (deterministic draws)
    lists = tree.query_ball_point(cust_xy, r=radius, return_sorted=True)
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.fromiter((t for lst in lists for t in lst), dtype=np.int64, count=int(indptr[-1]))
    return indptr, indices


def simulate(config: SimulatorConfig | None = None) -> SimulatedData:
    """Generate customers, terminals and labelled transactions (see the module docstring)."""
    cfg = config or handbook()
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    C, T, D = cfg.n_customers, cfg.n_terminals, cfg.n_days

    # --- profiles -------------------------------------------------------------------------------
    cust_xy = rng.uniform(0, 100, size=(C, 2))
    mean_amount = rng.uniform(5, 100, size=C)
    std_amount = mean_amount / 2
    mean_nb_tx = rng.uniform(0, 4, size=C)
    term_xy = rng.uniform(0, 100, size=(T, 2))
    indptr, indices = _reachable_terminals(cust_xy, term_xy, cfg.radius)
    n_reach = np.diff(indptr)

    # --- transactions ---------------------------------------------------------------------------
    counts = rng.poisson(mean_nb_tx[:, None], size=(C, D))  # (C, D) transactions per customer-day
    counts[n_reach == 0] = 0  # a customer with no terminal in reach cannot pay anywhere
    flat = counts.ravel()
    n = int(flat.sum())
    cust = np.repeat(np.repeat(np.arange(C), D), flat)
    day = np.repeat(np.tile(np.arange(D), C), flat)
    tod = rng.normal(SECONDS_PER_DAY / 2, 20_000, size=n).astype(np.int64)  # int() truncation as the handbook
    keep = (tod > 0) & (tod < SECONDS_PER_DAY)
    cust, day, tod = cust[keep], day[keep], tod[keep]
    n = len(cust)
    amount = rng.normal(mean_amount[cust], std_amount[cust])
    neg = amount < 0
    amount[neg] = rng.uniform(0, 2 * mean_amount[cust[neg]])
    amount = np.round(amount, 2)
    pick = (rng.random(n) * n_reach[cust]).astype(np.int64)  # uniform index into the reachable list
    term = indices[indptr[cust] + pick]
    ts = START_EPOCH_S + day.astype(np.int64) * SECONDS_PER_DAY + tod

    order = np.lexsort((cust, ts))  # time order, ties by customer (deterministic)
    cust, day, term, amount, ts = cust[order], day[order], term[order], amount[order], ts[order]
    fraud = np.zeros(n, dtype=np.int8)
    scenario = np.zeros(n, dtype=np.int8)

    # --- scenario 1: large amounts ----------------------------------------------------------------
    big = amount > cfg.amount_threshold
    fraud[big] = 1
    scenario[big] = 1

    # --- scenario 2: compromised terminals, 28 days from the day they are drawn --------------------
    # comp_term[t, d] is True when terminal t is compromised on day d. Like the handbook, draws
    # happen on days 0 .. max_day-1.
    last_day = int(day.max()) if n else 0
    comp_term = np.zeros((T, D), dtype=bool)
    for d in range(last_day):
        ts_ = rng.choice(T, size=cfg.compromised_terminals_per_day, replace=False)
        comp_term[ts_, d : d + cfg.terminal_compromise_days] = True
    s2 = comp_term[term, day]
    fraud[s2] = 1
    scenario[s2] = 2

    # --- scenario 3: compromised customers, a third of 14 days of transactions x5 -----------------
    # per-customer index lists (in time order) for O(own transactions) lookups
    by_cust = np.argsort(cust, kind="stable")
    cust_ptr = np.searchsorted(cust[by_cust], np.arange(C + 1))
    for d in range(last_day):
        victims = rng.choice(C, size=cfg.compromised_customers_per_day, replace=False)
        idx = np.concatenate([by_cust[cust_ptr[c] : cust_ptr[c + 1]] for c in victims])
        idx = idx[(day[idx] >= d) & (day[idx] < d + cfg.customer_compromise_days)]
        k = len(idx) // 3
        if k == 0:
            continue
        chosen = rng.choice(np.sort(idx), size=k, replace=False)
        amount[chosen] = np.round(amount[chosen] * cfg.amount_multiplier, 2)
        fraud[chosen] = 1
        scenario[chosen] = 3

    tx = pd.DataFrame(
        {
            "tx_id": np.arange(n, dtype=np.int64),
            "ts_s": ts.astype(np.int64),
            "day": day.astype(np.int32),
            "customer_id": cust.astype(np.int32),
            "terminal_id": term.astype(np.int32),
            "amount": amount,
            "fraud": fraud,
            "scenario": scenario,
        }
    )
    customers = pd.DataFrame(
        {
            "customer_id": np.arange(C, dtype=np.int32),
            "x": cust_xy[:, 0],
            "y": cust_xy[:, 1],
            "mean_amount": mean_amount,
            "std_amount": std_amount,
            "mean_nb_tx_per_day": mean_nb_tx,
            "n_terminals": n_reach.astype(np.int32),
        }
    )
    terminals = pd.DataFrame({"terminal_id": np.arange(T, dtype=np.int32), "x": term_xy[:, 0], "y": term_xy[:, 1]})
    return SimulatedData(customers, terminals, tx, cfg, time.perf_counter() - t0)


def write_dataset(data: SimulatedData, out_dir: Path) -> Path:
    """Write transactions/customers/terminals parquet files and the config as JSON; returns out_dir."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    data.transactions.to_parquet(out_dir / "transactions.parquet", index=False)
    data.customers.to_parquet(out_dir / "customers.parquet", index=False)
    data.terminals.to_parquet(out_dir / "terminals.parquet", index=False)
    meta = {
        "config": asdict(data.config),
        "seconds": data.seconds,
        "transactions": len(data.transactions),
        "fraud_rate": data.fraud_rate,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def load_transactions(out_dir: Path) -> pd.DataFrame:
    """Read the transactions parquet written by :func:`write_dataset`."""
    return pd.read_parquet(out_dir / "transactions.parquet")


def make_labels(tx: pd.DataFrame, *, delay_s: int) -> pd.DataFrame:
    """Label events as they would arrive in production: each transaction's label lands ``delay_s`` later.

    A fraud label is a chargeback; a genuine label is "no chargeback by the maturity date", so every
    transaction is labelled exactly ``delay_s`` after it happened. Columns: tx_id, customer_id,
    terminal_id, ts_s (the transaction's time), fraud, label_ts_s.
    """
    out = tx[["tx_id", "customer_id", "terminal_id", "ts_s", "fraud"]].copy()
    out["label_ts_s"] = out["ts_s"] + delay_s
    return out


def main() -> None:
    """Simulate the handbook dataset and write it under the data dir."""
    from systems.fraud.settings import FraudSettings

    settings = FraudSettings()
    settings.ensure_dirs()
    data = simulate(handbook())
    write_dataset(data, settings.datasets_dir / "fraud")


if __name__ == "__main__":
    main()
