"""NixOS as a target: the one module a flake imports, its agenix secret, the flake tree read."""
