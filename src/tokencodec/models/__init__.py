"""Model code and adapters: hooks that attach token compression to real models and undo themselves."""
