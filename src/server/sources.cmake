# Sources of src/server/ (added to aoai_core).
