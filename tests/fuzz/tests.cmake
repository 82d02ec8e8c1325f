# libFuzzer targets (AG_FUZZ=ON, clang) and their corpus replays.
