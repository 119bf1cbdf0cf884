"""Tests of spindle.observe."""
