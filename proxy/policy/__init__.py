"""Policy decisions: the engine interface, the embedded (regorus) and remote (OPA) engines."""
