"""The `yolov3` commands: thin shells that read files and arguments, run the library and write
results. Nothing outside this package imports it (tests/test_layout.py checks)."""
