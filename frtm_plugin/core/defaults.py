"""Constants the whole package agrees on, importable without torch (the plugin's forms read them)."""

MAX_OBJECT_ID = 254  # 0 is background and 255 is void in DAVIS label maps
VOID = 255

# The longest side at which frames are inferred unless asked otherwise: the scale S was trained at (DAVIS 480p,
# 854x480). Larger frames are shrunk and their masks pasted back at full size; bench/max_size.py measures the choice.
DEFAULT_MAX_SIZE = 854
