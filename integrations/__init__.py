"""Framework integration packages (each its own distribution); this file only gives their shared
conftest.py a unique module name next to tests/conftest.py."""
