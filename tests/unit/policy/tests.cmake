# Unit tests of src/policy/: ag_unit_test(name source.c ...)
