"""The removal-lock rule template and its lock program, installed as yktool.udev_assets."""
