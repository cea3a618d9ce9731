"""The Textual app. Imported only by the commands that open it."""
