#!/usr/bin/env python3
"""Prints what a `chorus simulate` report.json says of its curves, for the
cli tests to match:

  report_curves.py shots REPORT    tae/dro: the shots, the nodes, accuracies
  report_curves.py frugal REPORT   frugal: the λ sweep, its queries, and the
                                   λs where the queries cost more than 1 each;
                                   then each row's queries and their cost
"""
import json
import sys

kind, path = sys.argv[1], sys.argv[2]
report = json.load(open(path))
if kind == "shots":
    points = report["adaptation_by_shots"]
    ok = all(0 <= p["accuracy"] <= 1 for p in points)
    print("shots", [p["shots"] for p in points], "nodes",
          [p["nodes"] for p in points],
          "accuracies in [0, 1]" if ok else "accuracy out of range")
elif kind == "frugal":
    curve = report["frugal_curve"]
    queries = [p["queries_per_test_input"] for p in curve]
    falling = all(a >= b for a, b in zip(queries, queries[1:]))
    costs = [p["cost_per_test_input"] for p in curve]
    dearer = [p["lambda"] for p, q, c in zip(curve, queries, costs) if c > q + 1e-9]
    never_below = all(c >= q - 1e-9 for q, c in zip(queries, costs))
    print("lambdas", [p["lambda"] for p in curve], "queries",
          "non-increasing" if falling else "grew", queries,
          "cost never below queries" if never_below else "cost BELOW queries",
          "cost above queries at lambdas", dearer)
    print("rows", "; ".join(f'{r["method"]} {r["queries_per_test_input"]:.2f} -> '
                            f'{r["cost_per_test_input"]:.2f}' for r in report["rows"]))
else:
    sys.exit(f"unknown kind {kind!r}")
