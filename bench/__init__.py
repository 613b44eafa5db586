"""The benchmark suite (`make bench`, `make bench-quick`): the real stack on a private database
and Redis, each figure measured beside a floor from the same run; see docs/PERFORMANCE.md."""
