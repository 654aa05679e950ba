import openai


async def test_chat_plain_and_stream(gw):
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="anything", max_retries=0)
    resp = await client.chat.completions.create(
        model="up/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == "Hello! You said: hi"
    stream = await client.chat.completions.create(
        model="up/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! You said: hi"
