"""The test suite's root.

With pytest's default ``prepend`` import mode, loading this file puts ``tests/`` on ``sys.path``, so every test
module (in any folder) can ``import helpers``, the helpers shared across folders.
"""
