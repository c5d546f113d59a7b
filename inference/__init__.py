"""Model side of XMedGPT Workstation: engines, prompts, parsing, reliability, speech.

Qt-free and app-free: everything here runs headless in a server.
"""
