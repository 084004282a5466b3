"""Byte units, one definition for the engine and the studio (memory is reported in MiB, as
`free -m`, nvidia-smi and torch's memory summaries do)."""

MIB = 1024 * 1024
GIB = 1024 * MIB
