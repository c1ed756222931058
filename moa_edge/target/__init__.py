"""The target a model is compiled for: a board from the catalogue (boards/*.toml) as a typed
object. Below moa/ so that the cost model, codegen, energy and the harness all take it."""
from .board import CACHE_LEVELS, Board, CacheLevel, symbol_lister
from .catalogue import board_names, load_board, load_board_file, load_catalogue, validate_board

__all__ = ["CACHE_LEVELS", "Board", "CacheLevel", "board_names", "load_board", "load_board_file", "load_catalogue",
           "symbol_lister", "validate_board"]
