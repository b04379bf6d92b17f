"""The inverse-SQL benchmark (issue 7): how often does each way of making an inverse get it right?

Run:  dbproxy bench inverse [--strategy rules|llm|hybrid[,...]] [--cases PATTERN] [--out DIR] [--upstream URL]
      (or python -m benchmarks.inverse_bench with the same options)

The corpus (`benchmarks.inverse_corpus`: schemas with seed data, and agent transactions labelled
reversible or irreversible) runs case by case on copies of a seeded database; each strategy's
inverse is verified by the sandbox, as the proxy does at COMMIT, and then checked against the
ground truth on the real copy. One job per module:

- `strategies`: what makes an inverse (`rules`, `llm`, `hybrid`) and the `Strategy` protocol;
- `runner`: the per-case procedure (templates, captured forward, verification, apply, compare);
- `truth`: the ground truth, a whole database's rows and catalog shape, and readable diffs;
- `metrics`: counts, rates and timing percentiles per strategy and category;
- `report`: results.md, results.json, results.png;
- `main`: the command (server and sandbox lifecycle, exit status); `dbproxy.bench_cli` parses.
"""
