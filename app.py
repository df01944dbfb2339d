"""The CAM localizer web app, as Hugging Face Spaces runs it: `python app.py [--host H] [--port P]`.
The UI lives in `cam.ui` (one module per tab); installed, `cam app` starts the same."""

from cam.ui import build_app, main

__all__ = ["build_app", "main"]

if __name__ == "__main__":
    main()
