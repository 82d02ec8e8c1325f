# Benchmarks: micro-benchmarks and the bench driver smoke.
