"""The foundation every stage shares: configuration (``config``), logging (``logs``), atomic file
writing (``atomic``) and what a benchmark ran on (``machine``). Imports no stage."""
