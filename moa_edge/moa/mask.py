"""The kinds of attention mask and the C element type each is stored as: a leaf module, so
the DNF (which only names the kind) and the spec (which also needs the C type) share it."""
MASK_NONE, MASK_FLOAT, MASK_BOOL = "none", "float", "bool"
MASK_KINDS = (MASK_NONE, MASK_FLOAT, MASK_BOOL)
MASK_CTYPE = {MASK_NONE: "void", MASK_FLOAT: "float", MASK_BOOL: "uint8_t"}
