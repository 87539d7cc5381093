"""Test fakes and process helpers shared by the tests and the benchmarks: a fake upstream, servers in subprocesses."""
