"""The foundation every stage shares: configuration (``config``) and the command-line options bound to it
(``options``), logging (``logs``), atomic file writing (``atomic``), one writer per folder (``lock``), worker
pools (``pool``), spill files (``spill``) and what a benchmark ran on (``machine``). Imports no stage."""
