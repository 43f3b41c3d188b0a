"""Helpers shared by the tests (servers, facades, certificates, proxies, emulator requests)."""
