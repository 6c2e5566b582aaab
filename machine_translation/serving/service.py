"""Text in, translations out, for the HTTP service: a Translator behind a batcher.

Each text is split into lines and every line translated on its own, as
``translate`` does with standard input (the model was trained on single sentences;
an empty line stays empty). Lines of all concurrent requests are decoded together
(:class:`~machine_translation.serving.batching.DynamicBatcher`), with the
translator's settings, so a line gets the translation ``translate`` gives it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from machine_translation.inference.batch_translation import Translation
from machine_translation.inference.translator import Translator
from machine_translation.serving.alignment import Alignment, cross_attention_alignment
from machine_translation.serving.batching import DynamicBatcher
from machine_translation.serving.settings import ServeSettings

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass
class Explanation:
    """A sentence's n-best translations with their scores, and the best one's
    cross-attention alignment."""

    translations: list[Translation]
    alignment: Alignment


class TranslationService:
    """Translates texts for concurrent requests through one batching worker.

    Args:
        translator: Loaded with ``nbest`` = its beam size (every alternative a
            request may ask for; the best is the same whatever ``nbest``).
        settings: The batching limits.
    """

    def __init__(self, translator: Translator, settings: ServeSettings) -> None:
        self.translator = translator
        self.batcher: DynamicBatcher[list[Translation]] = DynamicBatcher(
            translator.translate,
            lambda text: len(translator.tokenizer.encode(text)),
            settings.batch_wait_ms / 1000,
            settings.max_batch_tokens,
        )

    @property
    def max_alternatives(self) -> int:
        """The most alternatives a request can have besides the best."""
        return self.translator.nbest - 1

    def start(self) -> None:
        """Starts the decoding worker on a thread of its own."""
        self.batcher.start()

    def work(self) -> None:
        """Decodes on the calling thread until :meth:`close` (instead of
        :meth:`start`)."""
        self.batcher.work()

    def close(self) -> None:
        """Finishes the queued requests and stops the worker."""
        self.batcher.close()

    async def translate(self, texts: list[str]) -> list[list[str]]:
        """Per text, its translations: the best first, then the other candidates
        (line by line for a text of several lines), each text once."""
        lines = [_LINE_BREAK.split(text) for text in texts]
        found = await self.batcher.translate([line for text in lines for line in text])
        results, start = [], 0
        for text_lines in lines:
            candidates = found[start : start + len(text_lines)]
            start += len(text_lines)
            joined = [
                "\n".join(line[min(rank, len(line) - 1)].text for line in candidates)
                for rank in range(self.translator.nbest)
            ]
            results.append(list(dict.fromkeys(joined)))  # repeats dropped, in order
        return results

    async def explain(self, sentence: str) -> Explanation:
        """The n-best translations of one sentence and the best one's alignment."""
        (translations,) = await self.batcher.translate([sentence])
        best = translations[0].text
        alignment = await self.batcher.run(
            lambda: cross_attention_alignment(
                self.translator.model, self.translator.tokenizer, sentence, best
            )
        )
        return Explanation(translations, alignment)
