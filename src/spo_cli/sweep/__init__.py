"""X/Y/Z sweeps for `spo compare`: any setting on an axis, A1111's X/Y/Z plot with scores.

`axes` reads the axes (`--x steps=20,30,50`: A1111's value lists and ranges) and checks them, pure;
`plan` lays a sweep out as compare's columns (models) and rows (image requests) and maps every
grid cell back to its axis values. Nothing here imports torch, numpy or PIL at import.
"""
