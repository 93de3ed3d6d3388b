import os
import sys

# `python -m` puts the current folder first on sys.path, so a file there named like a dependency
# (onnxslim.py, yaml.py) would run in its place; this package is already imported, and a user's model module
# is imported from the current folder explicitly (deploy/flows/convert.py).
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from deploy.cli import main

if __name__ == "__main__":
    main()
