"""The official OpenAI Python SDK against the running gateway, unchanged.

Run by .ci/run: python3 tests/openai_sdk.py http://127.0.0.1:PORT/v1
Checks a plain answer, a stream with usage, the model list, and that errors (a validation error
from the gateway, an upstream "Model Not Exist") reach the SDK as its typed exceptions with the
message intact.
"""

import sys

import openai
from openai import OpenAI


def main(base_url: str) -> None:
    client = OpenAI(base_url=base_url, api_key="any-key-the-gateway-ignores", max_retries=0)
    messages = [{"role": "user", "content": "Hello from the SDK"}]

    answer = client.chat.completions.create(model="deepseek-v4-flash", messages=messages)
    content = answer.choices[0].message.content
    assert "Hello from the SDK" in content, content
    assert answer.choices[0].finish_reason == "stop", answer
    usage = answer.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage

    stream = client.chat.completions.create(
        model="deepseek-v4-flash",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, stream_usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            stream_usage = chunk.usage
    assert "".join(pieces) == content, (pieces, content)
    assert stream_usage is not None and stream_usage.completion_tokens == usage.completion_tokens

    models = [model.id for model in client.models.list()]
    assert "deepseek-v4-flash" in models, models

    try:
        client.chat.completions.create(model="deepseek-v4-flash", messages=[])
        raise AssertionError("an empty message list must be rejected")
    except openai.BadRequestError as error:
        assert error.status_code == 400, error
        assert "messages" in error.message, error.message

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("an unknown model must be rejected")
    except openai.BadRequestError as error:
        assert error.status_code == 400, error
        assert "Model Not Exist" in error.message, error.message

    print("openai-sdk: 5 passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1])
