"""``python <this folder>`` (a packaged application) or ``python -m apps.<name>`` from ``deploy/``."""

try:
    from .app import main  # python -m apps.<name>
except ImportError:  # python deploy/apps/<name>: this folder is on sys.path
    from app import main

if __name__ == "__main__":
    raise SystemExit(main())
