"""Offline work on the embedded model: batch generation, teacher-forced capture, calibration."""
