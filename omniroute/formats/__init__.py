"""Wire formats: what each API's requests, responses, usage and errors look like.

One package per format (``openai``, ``anthropic``, ``gemini``, ``responses``,
``ollama``, ``completions``); the modules beside them are format-neutral. A format
package knows only its own format: it imports the shared modules, never another format.
"""
