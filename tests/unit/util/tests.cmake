# Unit tests of src/util/: ag_unit_test(name source.c ...)
