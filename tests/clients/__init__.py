"""Client-library tests (openai, LangChain, LlamaIndex, litellm, instructor) against a real kvserve."""
