"""The exit codes of every ``dpm`` command (and of ``python -m pipelines.label_corpus``).

0 success; 1 anything else; 2 bad arguments or configuration (before any work); 3 finished with
some conversations in the errors table.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
