"""The dreamreel library: one module per stage, joined by `video` and `zoom`."""
