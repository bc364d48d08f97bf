"""tokenizer.json files with the settings of each model family, trained here with HF
`tokenizers` on tests/data/sample.txt plus a few lines in other scripts (no downloads).

    build_family(name, folder) -> path of tokenizer.json      FAMILIES: the names

The settings are those the families' published tokenizer.json files declare:
  llama3   byte-level BPE, Split (Llama 3's pattern) + ByteLevel(use_regex=false),
           ignore_merges, <|begin_of_text|> by TemplateProcessing, specials after the merges
  qwen2    NFC, Split (Qwen2's pattern: digits one by one) + ByteLevel, ChatML specials,
           a non-special added token, no BOS
  smollm2  Digits(individual) + ByteLevel(use_regex=true) (GPT-2's pattern), specials first
  roberta  ByteLevel(add_prefix_space=true), RobertaProcessing (<s> ... </s>)
  llama2   SentencePiece-style: Prepend("▁") + Replace(" ", "▁") normalizer, no pre-tokenizer,
           byte_fallback with <0x00>..<0xFF>, fuse_unk, <s> by TemplateProcessing, decoder
           Replace + ByteFallback + Fuse + Strip; <extra> an added token matched after
           normalization
  mistral  SentencePiece-style with the Metaspace pre-tokenizer (prepend_scheme first,
           split false), decoder ByteFallback + Fuse + Metaspace, [INST] as added tokens
  sp_unk   SentencePiece-style without byte fallback: unknown characters fuse into <unk>;
           Metaspace split, prepend_scheme always
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# A little of many scripts, so merges exist beyond ASCII.
WORLD_TEXT = """\
Le cœur a ses raisons que la raison ne connaît point. Über allen Gipfeln ist Ruh.
¿Dónde está la biblioteca? Já está tudo pronto, obrigado. Ça coûte 3,50 €.
Москва — столица России. Привет, как дела? Быстрая коричневая лиса.
東京は日本の首都です。今日はいい天気ですね。我爱北京天安门。你好，世界！
서울은 한국의 수도입니다. 안녕하세요, 만나서 반갑습니다.
مرحبا بالعالم. القاهرة هي عاصمة مصر. اللغة العربية جميلة.
नमस्ते दुनिया। भारत की राजधानी नई दिल्ली है। हिन्दी एक भाषा है।
Γειά σου κόσμε. Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.
שלום עולם. ירושלים היא עיר עתיקה.
สวัสดีชาวโลก ภาษาไทยสวยงาม
🙂 😀 🎉 👍🏽 ❤️ 🇫🇷 emoji mixed with text 🚀🚀
def main(argv):\n    for i in range(10):\n        print(f"{i:03d}", argv[i])\n    return 0
if (x != 0 && y <= 42) { z = x * 3.14159; } // comment\n\tint a = 0x1F;
The year 2024 had 366 days; 1234567890 and 3.14 and 1,000,000.
I'm sure you've heard they'll say it's HE'S or THEY'RE, we'd I'd.
"""

FAMILIES = ["llama3", "qwen2", "smollm2", "roberta", "llama2", "mistral", "sp_unk"]

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|reserved_special_token_10|>"]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def training_text():
    with open(os.path.join(HERE, "data", "sample.txt"), encoding="utf-8") as f:
        sample = f.read()
    return [sample, WORLD_TEXT * 3]


def _byte_level(pre_tokenizer, vocab_size, special_first=()):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_first),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_text(), trainer)
    return tok


def _sentencepiece(vocab_size):
    """A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then the trained
    pieces (words marked with ▁), with merges learned inside words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                 split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, limit_alphabet=400)
    tok.train_from_iterator(training_text(), trainer)
    doc = json.loads(tok.to_str())
    trained = sorted(doc["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for s, _ in trained:
        vocab.setdefault(s, len(vocab))
    doc["model"]["vocab"] = vocab
    return doc


def _added(content, id, special=True, normalized=False, lstrip=False, rstrip=False):
    return {"id": id, "content": content, "single_word": False, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def build_family(name, folder):
    """Write the family's tokenizer.json into `folder`; returns its path."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from minillm.tokenizers.hf import LLAMA3_PATTERN, QWEN2_PATTERN
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    if name in ("llama3", "qwen2"):
        pattern = LLAMA3_PATTERN if name == "llama3" else QWEN2_PATTERN
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        tok = _byte_level(pre, 1500)
        tok.decoder = decoders.ByteLevel()
        if name == "llama3":
            tok.add_special_tokens(LLAMA3_SPECIALS)
            tok.post_processor = processors.Sequence([
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single="<|begin_of_text|> $A",
                    special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])
        else:
            tok.normalizer = normalizers.NFC()
            tok.add_special_tokens(CHATML_SPECIALS)
            tok.add_tokens(["<tool_call>", "</tool_call>"])
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
        doc = json.loads(tok.to_str())
        if name == "llama3":
            doc["model"]["ignore_merges"] = True
    elif name in ("smollm2", "roberta"):
        if name == "smollm2":
            pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False)])
            tok = _byte_level(pre, 1200, CHATML_SPECIALS)
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
        else:
            tok = _byte_level(pre_tokenizers.ByteLevel(add_prefix_space=True), 1200,
                              ["<s>", "<pad>", "</s>", "<unk>"])
            tok.add_special_tokens(["<mask>"])
            tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        tok.decoder = decoders.ByteLevel()
        doc = json.loads(tok.to_str())
        if name == "roberta":      # RoBERTa's <mask> takes the white space before it
            for t in doc["added_tokens"]:
                if t["content"] == "<mask>":
                    t["lstrip"] = True
    else:
        doc = _sentencepiece(1000)
        model = doc["model"]
        model.update({"unk_token": "<unk>", "fuse_unk": True, "byte_fallback": name != "sp_unk"})
        doc["added_tokens"] = [_added("<unk>", 0), _added("<s>", 1), _added("</s>", 2)]
        bos = {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                          {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<s>", "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}}],
               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
        doc["post_processor"] = bos
        if name == "llama2":       # an added token matched after normalization, too
            doc["added_tokens"].append(_added("<extra>", max(model["vocab"].values()) + 1,
                                              special=False, normalized=True))
            doc["normalizer"] = {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
            doc["pre_tokenizer"] = None
            doc["decoder"] = {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
        else:
            scheme, split = ("first", False) if name == "mistral" else ("always", True)
            doc["normalizer"] = None
            doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                                    "prepend_scheme": scheme, "split": split}
            doc["decoder"] = {"type": "Sequence", "decoders": [
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme,
                 "split": split}]}
            if name == "mistral":
                n = max(model["vocab"].values()) + 1
                doc["added_tokens"] += [_added("[INST]", n), _added("[/INST]", n + 1),
                                        _added("<extra>", n + 2, special=False, normalized=True)]
        doc = json.loads(Tokenizer.from_str(json.dumps(doc)).to_str())   # HF checks it
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
    return path
