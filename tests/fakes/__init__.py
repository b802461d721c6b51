"""Test fakes: stand-ins for the services the code talks to (vLLM/OpenAI, KServe, an oracle
retriever behind a real KServe server). Nothing here is collected as a test."""
