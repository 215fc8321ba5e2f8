"""bf16 over fp32 training speed, the trainer's steps taken in turns, on the training groups of
both benchmarks that time it: ``precision.py`` (groups from 450 SciFact train queries) and
``train_step.py`` (80 queries). It separates the two benchmarks' difference in method from the
machine's run-to-run noise; ``precision.py`` is the benchmark of record.

    python experiments/benchmarks/training_turns.py [--quick] [--rounds N]
"""
from __future__ import annotations

import argparse

from _common import CpuSteal, machine, print_json, print_table
from precision import step_rates_in_turns
from train_step import scifact_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per group set (default 20)")
    args = parser.parse_args()
    from rerank.hardware import cpu_features

    rounds = 3 if args.quick else args.rounds
    # Emulated bf16 (no AMX / AVX-512-BF16) is many times slower than fp32: a quick run there
    # times one round on train_step.py's groups only, and says so.
    brief = args.quick and not cpu_features().bf16
    if brief:
        rounds = 1
        print("no native bf16 kernels on this CPU: --quick times one round on train_step.py's groups only "
              "(emulated bf16 is many times slower than fp32)", flush=True)
    print(f"{machine()}; {rounds} rounds of one fp32 and one bf16 step", flush=True)
    rows, figures = [], {"benchmark": "training_turns", "quick": args.quick, "rounds": rounds, "brief": brief}
    sets = [("train_step.py", lambda: scifact_groups(80))]
    if not brief:
        sets.insert(0, ("precision.py", lambda: scifact_groups(450, dev_queries=50)))
    for name, make in sets:
        groups, queries, corpus = make()
        steal = CpuSteal()
        rates = step_rates_in_turns(groups, queries, corpus, rounds)
        ratio = round(rates["bf16"] / rates["fp32"], 3)
        rows.append({"groups of": name, "fp32 pairs/s": rates["fp32"], "bf16 pairs/s": rates["bf16"], "bf16 / fp32": ratio,
                     "CPU steal": steal.share()})
        figures[f"{name.split('.')[0]}_groups_bf16_vs_fp32"] = ratio
    print_table(rows, list(rows[0]))
    figures["rows"] = rows
    print_json(figures)


if __name__ == "__main__":
    main()
