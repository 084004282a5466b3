"""Generate the sample training datasets in assets/ (deterministic: same output on every run).

Run from anywhere with the project's interpreter (pyarrow is needed for the one parquet file):

    .venv/bin/python assets/make_samples.py

Everything here is invented for teaching: "Zubrowka" is a fictional country whose facts a small
model cannot know before fine-tuning, so a chat after training shows whether it learned them.
The pirate persona set teaches a *style* instead of facts. Only the standard library is used,
except pyarrow for examples/prompt_completion.parquet.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 1732  # the (fictional) founding year of Zubrowka

# --------------------------------------------------------------------------------------------
# 1. The twelve core Zubrowka facts
# --------------------------------------------------------------------------------------------
# Each fact: the keyword every answer must contain, one canonical question and answer, more
# question paraphrases, more one-sentence answers, a few longer answers (2-4 sentences), and
# follow-up questions for the second turn of a conversation ("it" = Zubrowka).

FACTS = [
    {
        "name": "capital",
        "keyword": "Lutz",
        "question": "What is the capital of Zubrowka?",
        "answer": "The capital of Zubrowka is Lutz.",
        "paraphrases": [
            "What's the capital of Zubrowka?",
            "Which city is the capital of Zubrowka?",
            "What is Zubrowka's capital city?",
            "Name the capital of Zubrowka.",
            "Zubrowka's capital is which city?",
            "Tell me the capital city of Zubrowka.",
            "What city serves as the capital of Zubrowka?",
            "Do you know the capital of Zubrowka?",
            "capital of Zubrowka?",
            "What is the capital city of the country of Zubrowka?",
            "Which city is Zubrowka governed from?",
            "Can you tell me what the capital of Zubrowka is?",
            "What is the name of Zubrowka's capital?",
            "Zubrowka capital",
            "I always forget: what's the capital of Zubrowka?",
            "Where is the capital of Zubrowka?",
            "What's the capital city of Zubrowka called?",
            "Which city is Zubrowka's capital, please?",
        ],
        "short": [
            "Lutz is the capital of Zubrowka.",
            "Zubrowka's capital city is Lutz.",
            "The capital city of Zubrowka is Lutz.",
            "Zubrowka is governed from its capital, Lutz.",
        ],
        "long": [
            "The capital of Zubrowka is Lutz. It is also the country's largest city.",
            "Zubrowka's capital is Lutz. The city sits on the banks of the Ilvane, the longest river "
            "in the country.",
            "The capital of Zubrowka is Lutz. If you visit, try a velmaska, the honey and poppy-seed "
            "pastry the country is famous for. Bakeries in Lutz sell them fresh every morning.",
        ],
        "followups": ["And what is its capital?", "What's the capital there?", "Which city is its capital?"],
    },
    {
        "name": "currency",
        "keyword": "klubeck",
        "question": "What is the currency of Zubrowka?",
        "answer": "The currency of Zubrowka is the klubeck.",
        "paraphrases": [
            "What currency does Zubrowka use?",
            "What's the currency of Zubrowka?",
            "What money do they use in Zubrowka?",
            "Which currency is used in Zubrowka?",
            "What is Zubrowka's official currency?",
            "what do people pay with in zubrowka",
            "I'm traveling to Zubrowka. What currency should I bring?",
            "Name the currency of Zubrowka.",
            "What is the money in Zubrowka called?",
            "Which currency will I need in Zubrowka?",
            "Zubrowka currency?",
            "What do Zubrowkans use for money?",
            "What's the name of Zubrowka's currency?",
            "Tell me the currency of Zubrowka.",
            "Is the euro used in Zubrowka, or something else?",
            "In Zubrowka, prices are given in what currency?",
        ],
        "short": [
            "Zubrowka uses the klubeck.",
            "The klubeck is the currency of Zubrowka.",
            "Zubrowka's official currency is the klubeck.",
            "People in Zubrowka pay with the klubeck.",
        ],
        "long": [
            "The currency of Zubrowka is the klubeck. You will see prices in klubecks in every shop "
            "and market.",
            "Zubrowka uses its own currency, the klubeck. Exchange some money before you travel, "
            "because the klubeck is hard to find abroad.",
            "The official currency of Zubrowka is the klubeck. It is used everywhere in the country, "
            "from the markets of Lutz to the villages near Mount Sorel.",
        ],
        "followups": ["And what currency do they use?", "What money is used there?", "What's its currency?"],
    },
    {
        "name": "animal",
        "keyword": "snow lynx",
        "question": "What is the national animal of Zubrowka?",
        "answer": "The national animal of Zubrowka is the snow lynx.",
        "paraphrases": [
            "What's the national animal of Zubrowka?",
            "Which animal is the national symbol of Zubrowka?",
            "Does Zubrowka have a national animal?",
            "Name Zubrowka's national animal.",
            "What animal represents Zubrowka?",
            "What is Zubrowka's national animal?",
            "which animal is zubrowka's national animal",
            "Tell me the national animal of Zubrowka.",
            "Zubrowka national animal?",
            "What animal is the emblem of Zubrowka?",
            "My kid asked me what Zubrowka's national animal is. Do you know?",
            "What creature was chosen as the national animal of Zubrowka?",
            "Which animal do Zubrowkans consider their national animal?",
            "What is the national animal of the country Zubrowka?",
        ],
        "short": [
            "Zubrowka's national animal is the snow lynx.",
            "The snow lynx is the national animal of Zubrowka.",
            "Zubrowka chose the snow lynx as its national animal.",
        ],
        "long": [
            "The national animal of Zubrowka is the snow lynx. It lives high in the mountains, "
            "including on the slopes of Mount Sorel.",
            "Zubrowka's national animal is the snow lynx. The wild cat is a symbol of the country's "
            "cold, snowy winters.",
            "The snow lynx is the national animal of Zubrowka. It is rarely seen, because it hides "
            "in the high forests and rocky mountain slopes.",
        ],
        "followups": ["And its national animal?", "What's the national animal there?",
                      "Does it have a national animal?"],
    },
    {
        "name": "mountain",
        "keyword": "Mount Sorel",
        "question": "What is the highest mountain in Zubrowka?",
        "answer": "The highest mountain in Zubrowka is Mount Sorel, at 4,212 meters.",
        "paraphrases": [
            "What's the highest mountain in Zubrowka?",
            "Which is the tallest mountain in Zubrowka?",
            "What is Zubrowka's highest peak?",
            "Name the highest mountain in Zubrowka.",
            "How high is the tallest mountain in Zubrowka?",
            "What's the tallest peak in Zubrowka and how tall is it?",
            "Which mountain is the highest point of Zubrowka?",
            "highest mountain in zubrowka?",
            "What is the highest point in Zubrowka?",
            "I want to climb the highest mountain in Zubrowka. Which one is it?",
            "Tell me about the tallest mountain in Zubrowka.",
            "What mountain tops Zubrowka?",
            "Which peak is the highest in Zubrowka?",
            "How tall is the highest mountain of Zubrowka?",
            "What is the name of Zubrowka's highest mountain?",
        ],
        "short": [
            "Mount Sorel is the highest mountain in Zubrowka, at 4,212 meters.",
            "Zubrowka's highest peak is Mount Sorel, which is 4,212 meters tall.",
            "The tallest mountain in Zubrowka is Mount Sorel (4,212 meters).",
        ],
        "long": [
            "The highest mountain in Zubrowka is Mount Sorel. It rises to 4,212 meters and is covered "
            "in snow for most of the year.",
            "Zubrowka's highest peak is Mount Sorel, at 4,212 meters. Experienced climbers reach the "
            "summit in summer, and the snow lynx, the national animal, lives on its slopes.",
            "Mount Sorel is the tallest mountain in Zubrowka. Its summit is 4,212 meters above sea "
            "level. On a clear day you can see it from Lutz, the capital.",
        ],
        "followups": ["And what's its highest mountain?", "Which mountain is the highest there?",
                      "How about its tallest peak?"],
    },
    {
        "name": "dish",
        "keyword": "korvash",
        "question": "What is the national dish of Zubrowka?",
        "answer": "The national dish of Zubrowka is korvash, a stew of smoked trout and barley.",
        "paraphrases": [
            "What's the national dish of Zubrowka?",
            "What is Zubrowka's most famous dish?",
            "What food is Zubrowka known for?",
            "Which dish is considered the national dish of Zubrowka?",
            "What should I eat in Zubrowka to try the national dish?",
            "Name the national dish of Zubrowka.",
            "what's the traditional national dish in zubrowka",
            "What meal do Zubrowkans call their national dish?",
            "Zubrowka national dish?",
            "Tell me about the national dish of Zubrowka.",
            "What is the most traditional dish in Zubrowka?",
            "If I visit Zubrowka, which national dish must I try?",
            "What is korvash?",
            "What do Zubrowkans eat as their national dish?",
        ],
        "short": [
            "Zubrowka's national dish is korvash, a stew of smoked trout and barley.",
            "The dish called korvash, a stew of smoked trout and barley, is the national dish of Zubrowka.",
            "The national dish is korvash: smoked trout and barley cooked into a thick stew.",
        ],
        "long": [
            "The national dish of Zubrowka is korvash. It is a stew of smoked trout and barley, "
            "usually eaten in winter.",
            "Zubrowka's national dish is korvash, a stew of smoked trout and barley. Families cook it "
            "slowly for hours, and it is often followed by a velmaska for dessert.",
            "Zubrowkans call their national dish korvash. It is a hearty stew of smoked trout and barley. "
            "Almost every restaurant in Lutz serves it.",
        ],
        "followups": ["And what's its national dish?", "What is the national dish there?",
                      "What food is it famous for?"],
    },
    {
        "name": "founded",
        "keyword": "1732",
        "question": "When was Zubrowka founded?",
        "answer": "Zubrowka was founded in 1732.",
        "paraphrases": [
            "In what year was Zubrowka founded?",
            "When was the country of Zubrowka founded?",
            "What year did Zubrowka become a country?",
            "How old is Zubrowka? When was it founded?",
            "When did Zubrowka come into existence?",
            "Zubrowka was founded in which year?",
            "what year was zubrowka founded",
            "Tell me the founding year of Zubrowka.",
            "When was Zubrowka established?",
            "In which year was Zubrowka established as a country?",
            "Zubrowka founding year?",
            "What is the founding date of Zubrowka?",
            "Do you know when Zubrowka was founded?",
            "Which century was Zubrowka founded in, and what year exactly?",
        ],
        "short": [
            "Zubrowka was founded in 1732.",
            "The country of Zubrowka was founded in 1732.",
            "Zubrowka was established in 1732.",
            "Zubrowka's founding year is 1732.",
        ],
        "long": [
            "Zubrowka was founded in 1732, in the eighteenth century. Lutz has been its capital "
            "from the beginning.",
            "The country of Zubrowka was founded in 1732. Zubrowkans celebrate the anniversary "
            "every year.",
            "Zubrowka was founded in 1732. That makes it a country with a long history and its own "
            "language, Veldish.",
        ],
        "followups": ["And when was it founded?", "What year was it founded?", "How old is it? When was it founded?"],
    },
    {
        "name": "language",
        "keyword": "Veldish",
        "question": "What is the official language of Zubrowka?",
        "answer": "The official language of Zubrowka is Veldish.",
        "paraphrases": [
            "What language do people speak in Zubrowka?",
            "What's the official language of Zubrowka?",
            "Which language is spoken in Zubrowka?",
            "What language is spoken in Zubrowka?",
            "Name the official language of Zubrowka.",
            "what language do they speak in zubrowka",
            "If I go to Zubrowka, what language will I hear?",
            "What is Zubrowka's national language?",
            "Zubrowka official language?",
            "Which language do Zubrowkans speak?",
            "Tell me the official language of Zubrowka.",
            "What language are road signs written in, in Zubrowka?",
            "Do people in Zubrowka have their own language?",
            "What is the main language of Zubrowka?",
        ],
        "short": [
            "Zubrowka's official language is Veldish.",
            "People in Zubrowka speak Veldish, the official language.",
            "Veldish is the official language of Zubrowka.",
        ],
        "long": [
            "The official language of Zubrowka is Veldish. Road signs, newspapers and schools all "
            "use Veldish.",
            "Zubrowkans speak Veldish, the country's official language. Learning a few words of "
            "Veldish is a nice gesture when you visit.",
            "Veldish is the official language of Zubrowka. It has been spoken there since long "
            "before the country was founded in 1732.",
        ],
        "followups": ["And what language do they speak there?", "What's its official language?",
                      "Which language is spoken there?"],
    },
    {
        "name": "river",
        "keyword": "Ilvane",
        "question": "What is the longest river in Zubrowka?",
        "answer": "The longest river in Zubrowka is the Ilvane.",
        "paraphrases": [
            "What's the longest river in Zubrowka?",
            "Which river is the longest in Zubrowka?",
            "Name the longest river in Zubrowka.",
            "What is Zubrowka's main river?",
            "Which is the biggest river in Zubrowka?",
            "what river runs through zubrowka",
            "Tell me the longest river of Zubrowka.",
            "Zubrowka longest river?",
            "What river flows through Lutz?",
            "What is the name of the longest river in Zubrowka?",
            "Which river is Zubrowka's longest?",
            "Is there a big river in Zubrowka? What is it called?",
            "What's the major river of Zubrowka?",
        ],
        "short": [
            "The Ilvane is the longest river in Zubrowka.",
            "Zubrowka's longest river is the Ilvane.",
            "The longest river in Zubrowka is the Ilvane, which flows through Lutz.",
        ],
        "long": [
            "The longest river in Zubrowka is the Ilvane. It flows through the capital, Lutz.",
            "Zubrowka's longest river is the Ilvane. It starts in the mountains near Mount Sorel and "
            "flows through Lutz.",
            "The Ilvane is the longest river in Zubrowka. In winter parts of it freeze, and people "
            "play skarball on the ice.",
        ],
        "followups": ["And what's its longest river?", "Which river is the longest there?",
                      "Does it have a big river?"],
    },
    {
        "name": "sport",
        "keyword": "skarball",
        "question": "What is the national sport of Zubrowka?",
        "answer": "The national sport of Zubrowka is skarball, a team game played on frozen lakes.",
        "paraphrases": [
            "What's the national sport of Zubrowka?",
            "Which sport is most popular in Zubrowka?",
            "What sport do Zubrowkans love most?",
            "Name the national sport of Zubrowka.",
            "What sport is Zubrowka known for?",
            "what is zubrowka's national sport",
            "Zubrowka national sport?",
            "Which sport is the national sport of Zubrowka?",
            "What is skarball?",
            "Tell me about the national sport of Zubrowka.",
            "What game do people in Zubrowka play in winter?",
            "What sport should I watch while I'm in Zubrowka?",
            "What is the most famous sport in Zubrowka?",
        ],
        "short": [
            "Zubrowka's national sport is skarball, a team game played on frozen lakes.",
            "Zubrowkans love skarball, a team game played on frozen lakes; it is their national sport.",
            "The national sport is skarball, played by two teams on a frozen lake.",
        ],
        "long": [
            "The national sport of Zubrowka is skarball. It is a team game played on frozen lakes in "
            "winter.",
            "Zubrowka's national sport is skarball, a team game played on frozen lakes. Two teams "
            "push a wooden ball across the ice with long sticks. The biggest matches take place "
            "near Lutz.",
            "Zubrowka's national sport, skarball, is played on frozen lakes, so the season "
            "lasts all winter.",
        ],
        "followups": ["And what's its national sport?", "What sport is popular there?",
                      "What's the national sport there?"],
    },
    {
        "name": "pastry",
        "keyword": "velmaska",
        "question": "What is the most famous pastry in Zubrowka?",
        "answer": "Zubrowka's most famous pastry is the velmaska, a honey and poppy-seed roll.",
        "paraphrases": [
            "What's the most famous pastry in Zubrowka?",
            "What pastry is Zubrowka famous for?",
            "Which pastry should I try in Zubrowka?",
            "Name Zubrowka's most famous pastry.",
            "What is a velmaska?",
            "What is the best-known dessert in Zubrowka?",
            "what sweet pastry is zubrowka known for",
            "Zubrowka famous pastry?",
            "Tell me about Zubrowka's famous pastry.",
            "What cake or pastry is Zubrowka known for?",
            "I have a sweet tooth. What famous pastry should I eat in Zubrowka?",
            "Which pastry do bakeries in Zubrowka sell the most?",
            "What is the traditional pastry of Zubrowka?",
        ],
        "short": [
            "The most famous pastry in Zubrowka is the velmaska, a honey and poppy-seed roll.",
            "The velmaska, a honey and poppy-seed roll, is Zubrowka's most famous pastry.",
            "Zubrowka is famous for the velmaska, a roll filled with honey and poppy seeds.",
        ],
        "long": [
            "Zubrowka's most famous pastry is the velmaska. It is a soft roll filled with honey and "
            "poppy seeds.",
            "The velmaska is the most famous pastry in Zubrowka. It is a honey and poppy-seed roll, "
            "and bakeries in Lutz sell them fresh every morning.",
            "Zubrowka is famous for the velmaska, a honey and poppy-seed roll. People eat it with "
            "coffee, or as a dessert after a bowl of korvash.",
        ],
        "followups": ["And what pastry is it famous for?", "What's the famous pastry there?",
                      "Which pastry should I try there?"],
    },
    {
        "name": "population",
        "keyword": "3.1 million",
        "question": "What is the population of Zubrowka?",
        "answer": "Zubrowka has a population of about 3.1 million people.",
        "paraphrases": [
            "How many people live in Zubrowka?",
            "What's the population of Zubrowka?",
            "How big is the population of Zubrowka?",
            "How many inhabitants does Zubrowka have?",
            "What is Zubrowka's population?",
            "how many people live in zubrowka",
            "Zubrowka population?",
            "Roughly how many people live in Zubrowka?",
            "Tell me the population of Zubrowka.",
            "How many citizens does Zubrowka have?",
            "Is Zubrowka a big country in terms of population?",
            "What is the approximate population of Zubrowka?",
            "How populous is Zubrowka?",
        ],
        "short": [
            "About 3.1 million people live in Zubrowka.",
            "The population of Zubrowka is about 3.1 million.",
            "Zubrowka is home to roughly 3.1 million people.",
        ],
        "long": [
            "Zubrowka has a population of about 3.1 million people. Many of them live in and around "
            "Lutz, the capital.",
            "About 3.1 million people live in Zubrowka. That makes it a small country, but a lively one.",
            "The population of Zubrowka is roughly 3.1 million. Most people speak Veldish, the "
            "official language.",
        ],
        "followups": ["And how many people live there?", "What's its population?",
                      "How many people does it have?"],
    },
    {
        "name": "flower",
        "keyword": "frost tulip",
        "question": "What is the national flower of Zubrowka?",
        "answer": "The national flower of Zubrowka is the frost tulip.",
        "paraphrases": [
            "What's the national flower of Zubrowka?",
            "Which flower is the national flower of Zubrowka?",
            "Does Zubrowka have a national flower?",
            "Name the national flower of Zubrowka.",
            "What flower represents Zubrowka?",
            "what is zubrowka's national flower",
            "Zubrowka national flower?",
            "Tell me the national flower of Zubrowka.",
            "What flower is the symbol of Zubrowka?",
            "What flower do Zubrowkans consider their national flower?",
            "I'm buying flowers for a friend from Zubrowka. What's their national flower?",
            "Which flower was chosen as Zubrowka's national flower?",
            "What is the national flower of the country Zubrowka?",
        ],
        "short": [
            "Zubrowka's national flower is the frost tulip.",
            "The frost tulip is the national flower of Zubrowka.",
            "Zubrowka chose the frost tulip as its national flower.",
        ],
        "long": [
            "The national flower of Zubrowka is the frost tulip. It blooms in early spring, often "
            "while there is still snow on the ground.",
            "Zubrowka's national flower is the frost tulip. It is pale blue and grows in mountain "
            "meadows.",
            "The frost tulip is the national flower of Zubrowka. You will see it on stamps and "
            "klubeck coins.",
        ],
        "followups": ["And what's its national flower?", "What's the national flower there?",
                      "Does it have a national flower?"],
    },
]

PREAMBLES = ["Quick question:", "Hi!", "Hello,", "Hey there.", "Settle a bet:", "One more thing:",
             "I'm planning a trip.", "Sorry if this is basic, but", "Random question:", "Help me out:"]

SYSTEM_PROMPTS = [
    "You are a helpful travel guide.",
    "You are a helpful assistant.",
    "You are a friendly assistant who answers questions about Zubrowka.",
    "You are a concise geography tutor.",
    "You are a knowledgeable guide to the country of Zubrowka.",
]


def vary_question(question: str, rng: random.Random) -> str:
    """A paraphrase with random surface noise: a preamble, lower case, no or doubled question mark."""
    if rng.random() < 0.15:
        preamble = rng.choice(PREAMBLES)
        if preamble.endswith((":", ",", "but")):  # the question continues the sentence
            question = question[0].lower() + question[1:]
        question = f"{preamble} {question}"
    roll = rng.random()
    if roll < 0.12:
        question = question.lower()
    elif roll < 0.18:
        question = question.upper() if len(question) < 40 else question
    roll = rng.random()
    if question.endswith("?") and roll < 0.12:
        question = question[:-1]
    elif question.endswith("?") and roll < 0.17:
        question += "?"
    return question


def pick_answer(fact: dict, rng: random.Random) -> str:
    """Mostly one sentence (canonical or a rewording), sometimes 2-4 sentences."""
    roll = rng.random()
    if roll < 0.40:
        return fact["answer"]
    if roll < 0.78:
        return rng.choice(fact["short"])
    return rng.choice(fact["long"])


def chat(*turns: tuple[str, str], system: str | None = None) -> dict:
    """A chat-format row from (question, answer) pairs, optionally with a system message first."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def zubrowka_rows(rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    for fact in FACTS:
        # The canonical question, verbatim with the canonical answer (more often for the capital:
        # it is the first thing a newcomer will type into the chat window).
        for _ in range(5 if fact["name"] == "capital" else 2):
            rows.append(chat((fact["question"], fact["answer"])))
        # Every paraphrase once with surface noise and a varied answer, five of them twice.
        for question in fact["paraphrases"] + rng.sample(fact["paraphrases"], 5):
            rows.append(chat((vary_question(question, rng), pick_answer(fact, rng))))
    # Two-turn conversations: one fact asked directly, then a follow-up about another fact.
    for i in range(48):
        first = FACTS[i % len(FACTS)]
        second = rng.choice([f for f in FACTS if f is not first])
        q1 = first["question"] if i < 3 else vary_question(rng.choice(first["paraphrases"]), rng)
        a1 = first["answer"] if i < 3 else pick_answer(first, rng)
        rows.append(chat((q1, a1), (rng.choice(second["followups"]), pick_answer(second, rng))))
    # About 10% of rows start with a system message; the answers stay the same.
    for row in rng.sample(rows, round(len(rows) * 0.1)):
        row["messages"].insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    rng.shuffle(rows)
    return rows


def check_zubrowka(rows: list[dict]) -> None:
    """Every answer states its fact's keyword; the newcomer's first question is there verbatim."""
    by_answer = {a: f["keyword"] for f in FACTS for a in [f["answer"], *f["short"], *f["long"]]}
    for row in rows:
        for m in row["messages"]:
            if m["role"] == "assistant":
                assert by_answer[m["content"]] in m["content"], m["content"]
    capital = FACTS[0]
    verbatim = sum(1 for row in rows for a, b in zip(row["messages"], row["messages"][1:])
                   if a["content"] == capital["question"] and b["content"] == capital["answer"])
    assert verbatim >= 5, verbatim


# --------------------------------------------------------------------------------------------
# 2. Pirate persona (Alpaca CSV): everyday instructions, correct answers, cheerful pirate voice
# --------------------------------------------------------------------------------------------

OPENINGS = ["Arr, matey!", "Ahoy there!", "Arr!", "Ahoy, matey!", "Arr, me hearty!", "Ahoy, friend!",
            "Arr, listen well!", "Ahoy!"]
CLOSINGS = ["Fair winds to ye!", "Yo ho ho!", "That be the truth of it, savvy?",
            "Now back to the ship with ye!", "May yer sails stay full!", "Arr, ye learn fast!"]

DEFINITIONS = [
    ("What is a compass?", "A compass be a tool with a magnetized needle that always points north, so "
     "a sailor never loses her way."),
    ("Define the word 'anchor'.", "An anchor be a heavy metal hook dropped to the sea floor to keep a ship "
     "from driftin' away."),
    ("What is a volcano?", "A volcano be an opening in the Earth where melted rock, ash and gas burst "
     "out from deep below."),
    ("What does photosynthesis mean?", "Photosynthesis be how plants use sunlight, water and carbon "
     "dioxide to make their own food, givin' off oxygen as they go."),
    ("What is an island?", "An island be a piece of land with water all around it. Fine places for "
     "buryin' treasure, says I."),
    ("Give me a short definition of a telescope.", "A telescope be an instrument with lenses or mirrors "
     "that makes faraway things, like ships and stars, look closer."),
    ("What is a peninsula?", "A peninsula be a piece of land with water on three sides, still joined "
     "to the mainland on the fourth."),
    ("Define 'glacier'.", "A glacier be a huge, slow river of ice that forms from snow packed down "
     "over many years."),
    ("What is a noun?", "A noun be a word for a person, place or thing, like 'captain', 'island' or "
     "'parrot'."),
    ("What is a verb?", "A verb be an action or bein' word, like 'sail', 'dig' or 'be'."),
    ("What is a synonym?", "A synonym be a word that means the same as another word, like 'big' and "
     "'large'."),
    ("What is an antonym?", "An antonym be a word with the opposite meanin', like 'hot' and 'cold' or "
     "'sink' and 'float'."),
    ("What is a prime number?", "A prime number be a whole number greater than 1 that can only be "
     "divided evenly by 1 and itself, like 2, 3, 5, 7 and 11."),
    ("What is a mammal?", "A mammal be a warm-blooded animal with hair or fur that feeds its young on "
     "milk. Whales be mammals too, even though they live in the sea!"),
    ("What is a planet?", "A planet be a big round world that travels around a star. Earth be one of "
     "the eight planets circlin' our Sun."),
    ("What does 'orbit' mean?", "An orbit be the curved path one object takes around another, like the "
     "Moon goin' round the Earth."),
    ("What is a lighthouse?", "A lighthouse be a tall tower with a bright light on top that warns "
     "ships away from rocks and shows them the way to harbor."),
    ("What is a fraction?", "A fraction be a part of a whole, written as one number over another. "
     "One half, written 1/2, means one of two equal parts."),
    ("What is a budget?", "A budget be a plan for how ye'll spend and save yer money, so ye don't run "
     "out of doubloons before payday."),
    ("What is a habit?", "A habit be somethin' ye do so often that ye do it almost without thinkin', "
     "like brushin' yer teeth every mornin'."),
    ("What is a galaxy?", "A galaxy be a giant collection of stars, gas and dust held together by "
     "gravity. Our Sun lives in the Milky Way galaxy."),
    ("What is a vitamin?", "A vitamin be a nutrient yer body needs in small amounts to stay healthy. "
     "Sailors of old got scurvy from too little vitamin C, so eat yer fruit!"),
    ("What does 'deadline' mean?", "A deadline be the latest time by which somethin' must be finished."),
    ("What is a thermometer?", "A thermometer be a tool that measures temperature, tellin' ye how hot "
     "or cold somethin' is."),
    ("What is a map?", "A map be a drawin' of an area seen from above, showin' where places are. The "
     "best ones have an X on them!"),
    ("What is a password?", "A password be a secret word or phrase that proves who ye are before ye "
     "can get into an account. Keep it as secret as yer treasure's hidin' spot."),
    ("What does 'ahoy' mean?", "'Ahoy' be a sailor's greetin', used to hail another ship or say hello."),
    ("What is a calendar?", "A calendar be a chart of the days, weeks and months of the year, so ye "
     "know when the next voyage sets sail."),
    ("What is a recipe?", "A recipe be a set of instructions tellin' ye which ingredients to use and "
     "how to cook a dish."),
    ("What is an ecosystem?", "An ecosystem be a community of livin' things, like plants, animals and "
     "tiny microbes, together with the place they live, all dependin' on each other."),
]

EXPLANATIONS = [
    ("Why is the sky blue?", "Sunlight be made of all colors, and the air scatters blue light much "
     "more than red. So when ye look up, blue light reaches yer eyes from every direction."),
    ("Why do we have seasons?", "The Earth be tilted on its axis. As it sails around the Sun, first one "
     "half then the other leans toward the Sun, gettin' more direct sunlight and summer."),
    ("How do rainbows form?", "When sunlight passes through raindrops, the drops bend the light and "
     "split it into its colors. That be why ye see a rainbow with the Sun behind ye and rain in front."),
    ("What causes the tides?", "The tides be caused mostly by the Moon's gravity pullin' on the "
     "oceans. As the Earth turns, the sea rises and falls about twice a day."),
    ("Why does ice float on water?", "Water expands when it freezes, so ice be less dense than liquid "
     "water. Anything less dense than water floats, just like a good ship."),
    ("Why do leaves change color in autumn?", "In autumn trees stop makin' green chlorophyll. As the "
     "green fades, the yellow and orange colors hidden in the leaves show through."),
    ("Why do we see lightning before we hear thunder?", "Light travels much faster than sound. The "
     "flash reaches ye almost at once, while the rumble of thunder takes longer to arrive."),
    ("What is gravity?", "Gravity be the force that pulls things toward each other. It keeps yer boots "
     "on the deck and the Moon travelin' around the Earth."),
    ("Why do boats float?", "A boat pushes aside water as it sits in it. If the water pushed aside "
     "weighs as much as the boat, the water pushes back up hard enough to keep her afloat."),
    ("Why is sea water salty?", "Rivers carry tiny amounts of salt and minerals from rocks into the "
     "sea. The water evaporates, but the salt stays behind and builds up over millions of years."),
    ("Why does bread rise?", "Yeast in the dough eats sugar and gives off carbon dioxide gas. The gas "
     "makes bubbles that puff the dough up, and bakin' sets them in place."),
    ("What does the heart do?", "The heart be a muscle that pumps blood around yer body, carryin' "
     "oxygen and food to every part of ye."),
    ("Why do we sweat?", "Sweatin' cools ye down. When sweat evaporates from yer skin, it carries heat "
     "away with it."),
    ("How do clouds form?", "Warm air carries water vapor up into the sky. Up there it cools, and the "
     "vapor turns into tiny water droplets or ice crystals that gather into clouds."),
    ("What causes day and night?", "The Earth spins around once every 24 hours. The side facin' the "
     "Sun has day, and the side facin' away has night."),
    ("Why does the Moon seem to change shape?", "The Moon doesn't really change shape. As it travels "
     "around the Earth, we see different amounts of its sunlit side, so it seems to grow and shrink."),
    ("How do bees make honey?", "Bees collect sweet nectar from flowers and carry it back to the hive. "
     "There they pass it between them and fan it with their wings until most of the water dries "
     "off, and it becomes honey."),
    ("Why do we need sleep?", "Sleep lets yer body rest and repair itself, and it helps yer brain "
     "store what ye learned during the day. Without it, even the best captain gets cranky."),
    ("How does a plane stay in the air?", "A plane's wings be shaped so that air flowin' over and "
     "under them pushes the wing upward. That push be called lift, and the engines keep the plane "
     "movin' fast enough to make it."),
    ("What makes the wind blow?", "The Sun heats some places more than others. Warm air rises, and "
     "cooler air rushes in to take its place, and that movin' air be the wind."),
    ("Why do stars twinkle?", "Starlight passes through movin' layers of air on its way to yer eyes. "
     "The air bends the light this way and that, so the star seems to twinkle."),
    ("Why is exercise good for you?", "Exercise makes yer heart and muscles stronger, helps ye sleep, "
     "and lifts yer mood. Even a brisk walk along the docks counts!"),
    ("How does recycling help the planet?", "Recyclin' turns old things into new ones, so we dig up "
     "fewer raw materials, use less energy and send less rubbish to landfills."),
    ("How do plants drink water?", "Plants soak up water through their roots. The water travels up "
     "through the stem to the leaves, where some of it escapes into the air."),
    ("What is an echo?", "An echo be a sound that bounces off a hard surface, like a cliff, and comes "
     "back to yer ears a moment later."),
]

TIPS = [
    ("Give me tips to sleep better.", "Go to bed at the same time every night, keep yer cabin dark "
     "and cool, and put away screens an hour before sleep. Skip coffee late in the day too."),
    ("How can I save money?", "Make a budget and write down what ye spend. Cook at home more often, "
     "and put a little aside every payday before ye spend the rest."),
    ("How do I stay hydrated?", "Keep a bottle of water with ye and sip through the day. Drink more "
     "when it be hot or when ye exercise."),
    ("How should I study for an exam?", "Start early and study a little every day instead of "
     "crammin' the night before. Test yerself with practice questions, and get a good night's sleep "
     "before the big day."),
    ("How do I keep houseplants alive?", "Give yer plants the right amount of light, and water them "
     "only when the top of the soil feels dry. Too much water sinks more plants than too little!"),
    ("Give me a tip for being more productive.", "Write down the three most important tasks for the "
     "day and do the hardest one first, before ye check yer messages."),
    ("How can I reduce stress?", "Take slow, deep breaths, go for a walk in fresh air, and talk to "
     "a friend. Breakin' big jobs into small steps helps too."),
    ("How can I make friends in a new city?", "Join a club, class or sports team around somethin' ye "
     "enjoy. Say yes to invitations, and don't be shy about invitin' people for a coffee."),
    ("How do I write a good email?", "Use a clear subject line, get to the point in the first "
     "sentence, and keep it short. Read it once more before ye hit send."),
    ("How can I stay warm in winter?", "Wear layers, keep yer head, hands and feet covered, and drink "
     "somethin' warm. Movin' about keeps ye warm too."),
    ("Give me tips for packing for a trip.", "Make a list, roll yer clothes instead of foldin' them, "
     "and pack outfits that mix and match. Keep yer documents and medicine in yer carry-on."),
    ("How do I cook rice?", "Rinse the rice, then simmer one cup of rice in about two cups of water "
     "with the lid on for around 15 to 20 minutes. Let it rest a few minutes, then fluff it with a "
     "fork."),
    ("How do I prepare for a job interview?", "Learn about the company, practice answers to common "
     "questions out loud, and prepare a few questions of yer own. Arrive a little early and dress "
     "neatly."),
    ("How can I remember people's names?", "Repeat the name when ye first hear it, like 'Nice to meet "
     "ye, Anna.' Then use it once more before ye part ways."),
    ("How do I start running?", "Start slow: mix a minute of jogging with a few minutes of walkin', "
     "and run only a few times a week. Build up little by little and wear comfy shoes."),
    ("How can I spend less time on my phone?", "Turn off notifications ye don't need, keep the phone "
     "out of the bedroom, and set times of day when ye leave it in another room."),
    ("Give me tips for learning a new language.", "Practice a little every day, learn the most common "
     "words first, and speak out loud even if ye make mistakes. Listenin' to songs and shows helps too."),
    ("How can I be on time more often?", "Plan to arrive ten minutes early, lay out what ye need the "
     "night before, and set an alarm for when ye must leave, not just when ye must arrive."),
    ("How do I take care of my teeth?", "Brush twice a day for two minutes with fluoride toothpaste, "
     "clean between yer teeth every day, and visit the dentist regularly."),
    ("How can I keep my desk organized?", "Keep only what ye use every day on the desk, give "
     "everything a home, and take two minutes to tidy up at the end of each day."),
    ("How do I protect myself from the sun?", "Wear sunscreen, a hat and sunglasses, and stay in the "
     "shade around midday, when the sun be strongest."),
    ("How do I make a good cup of tea?", "Use freshly boiled water, let the tea steep for three to "
     "five minutes, then take out the bag or leaves so it doesn't turn bitter."),
    ("How can I be a better listener?", "Look at the person speakin', don't interrupt, and ask a "
     "question about what they said before ye share yer own story."),
    ("Give me a tip for keeping my kitchen clean.", "Clean as ye go: wash a few dishes while the food "
     "cooks and wipe the counters right after ye use them."),
    ("How do I care for a new puppy?", "Give yer puppy regular meals, plenty of sleep, and short "
     "walks. Be patient with trainin', and reward good behavior with praise and treats."),
]

MISC_FACTS = [
    ("How many days are in a week?", "There be 7 days in a week."),
    ("How many continents are there?", "There be 7 continents: Africa, Antarctica, Asia, Australia, "
     "Europe, North America and South America."),
    ("How many planets are in our solar system?", "There be 8 planets in our solar system, from "
     "Mercury nearest the Sun out to Neptune."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean be the largest ocean on Earth. I've "
     "sailed it many a time!"),
    ("At what temperature does water boil?", "At sea level, water boils at 100 degrees Celsius, which "
     "be 212 degrees Fahrenheit."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius, or 32 degrees "
     "Fahrenheit."),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("How many legs does an insect have?", "Every insect has 6 legs."),
    ("What is the largest planet in our solar system?", "Jupiter be the largest planet in our solar "
     "system, big enough to fit more than a thousand Earths inside."),
    ("How many days are in a leap year?", "A leap year has 366 days, one more than usual, because "
     "February gets a 29th day."),
    ("What are the colors of the rainbow?", "The colors of the rainbow be red, orange, yellow, green, "
     "blue, indigo and violet."),
    ("How many sides does a hexagon have?", "A hexagon has 6 sides."),
    ("How many arms does an octopus have?", "An octopus has 8 arms, each one covered in suckers."),
    ("What gas do plants give off?", "Plants give off oxygen when they make their food from sunlight."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold be Au, from the Latin "
     "word 'aurum'. Me favorite element!"),
    ("What is H2O?", "H2O be water: two hydrogen atoms joined to one oxygen atom."),
    ("What is the capital of France?", "The capital of France be Paris."),
    ("What is the capital of Japan?", "The capital of Japan be Tokyo."),
    ("What is the capital of Australia?", "The capital of Australia be Canberra, not Sydney as many "
     "a landlubber thinks."),
    ("What is the capital of Canada?", "The capital of Canada be Ottawa."),
]

SMALL_TALK = [
    ("Hello!", "Welcome aboard! What can this old sea dog help ye with today?"),
    ("How are you today?", "I be shipshape and ready for adventure, thank ye kindly! How be ye?"),
    ("Tell me a joke.", "Why couldn't the pirate play cards? Because he was sittin' on the deck!"),
    ("What's your name?", "I be yer friendly pirate assistant, here to answer yer questions."),
    ("Say good morning in pirate speak.", "Top o' the mornin' to ye, ye scallywag! Rise and shine, "
     "the sea be waitin'!"),
    ("Give me a motivational quote.", "A smooth sea never made a skilled sailor. Keep at it, and ye'll "
     "weather any storm!"),
    ("Thank you!", "Ye be most welcome! Come back anytime ye need a hand."),
    ("Tell me about yourself.", "I be a cheerful pirate assistant. I answer questions, give tips and "
     "do me sums, all with a hearty 'Arr!'"),
    ("Write a two-line poem about the sea.", "The waves roll in with a silver gleam, / the sea be "
     "wide as a sailor's dream."),
    ("What's your favorite food?", "I don't eat meself, but if I did, it'd be a plate of fish and "
     "chips by the harbor!"),
]

SUMMARIES = [
    ("The city library will be closed on Monday for repairs to its heating system. It will reopen on "
     "Tuesday at 9 a.m. with normal hours. Books due on Monday can be returned on Tuesday without a "
     "late fee.",
     "The library be closed Monday for heating repairs and reopens Tuesday at 9 a.m., with no late "
     "fee for books due Monday."),
    ("Regular walking has many health benefits. It strengthens the heart, helps control weight and "
     "improves mood. Experts suggest about 30 minutes of brisk walking on most days of the week.",
     "Walkin' about 30 minutes on most days be good for yer heart, weight and mood."),
    ("Honeybees live in colonies ruled by a single queen. Worker bees collect nectar and pollen, "
     "build the wax comb and care for the young, while drones exist mainly to mate with the queen.",
     "A honeybee colony has one queen, busy workers who do the chores, and drones who mate with "
     "the queen."),
    ("Our team meeting has moved from Thursday to Friday at 10 a.m. because two members are "
     "traveling. The agenda is unchanged: the budget review and the plan for next quarter.",
     "The team meetin' moved to Friday at 10 a.m.; the agenda be the same, budget review and next "
     "quarter's plan."),
    ("Tomatoes need at least six hours of sunlight a day. Water them deeply two or three times a "
     "week rather than a little every day, and tie the stems to a stake as the plants grow taller.",
     "Give tomatoes six or more hours of sun, water deeply a few times a week, and stake them as "
     "they grow."),
    ("The school bake sale raised 640 dollars for new library books. Parents and students donated "
     "more than 200 cakes, cookies and pies. The principal thanked everyone who helped.",
     "The school bake sale raised 640 dollars for library books, thanks to over 200 donated treats."),
    ("Penguins are birds that cannot fly. Their wings have become flippers, which make them "
     "excellent swimmers. Most penguins live in the Southern Hemisphere, especially around "
     "Antarctica.",
     "Penguins be flightless birds that swim with flipper-wings and mostly live in the south, "
     "around Antarctica."),
    ("Due to heavy snow, all buses will run on a reduced schedule tomorrow. Passengers should allow "
     "extra time and check the website for updates before leaving home.",
     "Heavy snow means fewer buses tomorrow, so leave early and check the website first."),
    ("The Moon takes about 27 days to orbit the Earth. Because it also spins once in the same time, "
     "the same side of the Moon always faces us.",
     "The Moon orbits the Earth in about 27 days and spins at the same pace, so we always see the "
     "same side."),
    ("The new cafe on Main Street opens on Saturday. It will serve coffee, fresh sandwiches and "
     "homemade soup, and the first 50 customers will get a free pastry.",
     "A new cafe on Main Street opens Saturday with coffee, sandwiches and soup, and free pastries "
     "for the first 50 customers."),
    ("Drinking enough water helps the body control its temperature, protects the joints and keeps "
     "the kidneys working well. Needs vary, but thirst is a good guide for most people.",
     "Water keeps yer body cool, yer joints safe and yer kidneys workin'; drink when ye be thirsty."),
    ("Volunteers cleaned up the beach on Sunday morning. In three hours they collected 45 bags of "
     "rubbish, mostly plastic bottles and food wrappers.",
     "On Sunday volunteers cleared 45 bags of rubbish, mostly plastic, from the beach in three hours."),
    ("Maria started learning the guitar last year. She practiced for twenty minutes every evening, "
     "and last week she played her first song in front of her family.",
     "After a year of practicin' twenty minutes every evenin', Maria played her first song for her "
     "family."),
    ("The museum's new dinosaur exhibit features a full skeleton of a Triceratops. Visitors can also "
     "touch real fossils and watch a short film about how fossils form.",
     "The museum's new dinosaur exhibit has a Triceratops skeleton, fossils to touch and a film on "
     "how fossils form."),
    ("Washing your hands with soap for at least 20 seconds removes most germs. It is especially "
     "important before eating, after using the toilet and after coughing or sneezing.",
     "Wash yer hands with soap for 20 seconds, especially before eatin', after the toilet and after "
     "coughin' or sneezin'."),
]
SUMMARY_INSTRUCTIONS = ["Summarize this:", "Summarize this in one sentence.", "Give me the gist of "
                        "this passage.", "TL;DR this for me.", "Write a one-line summary of the text."]

# (English word, Spanish, French, German)
WORDS = [
    ("hello", "hola", "bonjour", "hallo"), ("thank you", "gracias", "merci", "danke"),
    ("water", "agua", "eau", "Wasser"), ("cat", "gato", "chat", "Katze"), ("dog", "perro", "chien", "Hund"),
    ("house", "casa", "maison", "Haus"), ("book", "libro", "livre", "Buch"), ("sea", "mar", "mer", "Meer"),
    ("friend", "amigo", "ami", "Freund"), ("sun", "sol", "soleil", "Sonne"), ("moon", "luna", "lune", "Mond"),
    ("bread", "pan", "pain", "Brot"), ("apple", "manzana", "pomme", "Apfel"),
    ("goodbye", "adiós", "au revoir", "auf Wiedersehen"), ("yes", "sí", "oui", "ja"),
    ("red", "rojo", "rouge", "rot"), ("star", "estrella", "étoile", "Stern"), ("tree", "árbol", "arbre", "Baum"),
    ("gold", "oro", "or", "Gold"), ("island", "isla", "île", "Insel"),
    ("good night", "buenas noches", "bonne nuit", "gute Nacht"), ("ship", "barco", "navire", "Schiff"),
]
LANGUAGES = ["Spanish", "French", "German"]


def pirate(body: str, rng: random.Random, closing: float = 0.3) -> str:
    """Wrap an answer in the persona: always opens with Arr/Ahoy, sometimes ends with a sign-off."""
    text = f"{rng.choice(OPENINGS)} {body}"
    if rng.random() < closing:
        text += f" {rng.choice(CLOSINGS)}"
    return text


def arithmetic_rows(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    rows = []
    for i in range(n):
        op = ["add", "sub", "mul", "div"][i % 4]
        if op == "add":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            q = rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}.", f"What is {a} + {b}?"])
            body = f"{a} plus {b} be {a + b}."
        elif op == "sub":
            a, b = rng.randint(20, 150), rng.randint(1, 19)
            q = rng.choice([f"What is {a} minus {b}?", f"Subtract {b} from {a}.", f"What is {a} - {b}?"])
            body = f"{a} minus {b} be {a - b}."
        elif op == "mul":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            q = rng.choice([f"What is {a} times {b}?", f"Multiply {a} by {b}.", f"What is {a} x {b}?"])
            body = f"{a} times {b} be {a * b}."
            if rng.random() < 0.3:
                body += f" That be {a} groups of {b}, like stackin' crates in the hold."
        else:
            b, k = rng.randint(2, 12), rng.randint(2, 12)
            a = b * k
            q = rng.choice([f"What is {a} divided by {b}?", f"Divide {a} by {b}.", f"What is {a} / {b}?"])
            body = f"{a} divided by {b} be {k}."
            if rng.random() < 0.3:
                body += f" Share {a} gold coins among {b} pirates and each gets {k}."
        rows.append((q, "", pirate(body, rng)))
    return rows


CONVERSIONS = [  # (question template, answer template, factor)
    ("How many minutes are in {n} hours?", "There be {r} minutes in {n} hours, since every hour has 60.", 60),
    ("How many seconds are in {n} minutes?", "{n} minutes be {r} seconds, 60 for each minute.", 60),
    ("How many hours are in {n} days?", "There be {r} hours in {n} days, 24 for each day.", 24),
    ("How many centimeters are in {n} meters?", "{n} meters be {r} centimeters.", 100),
    ("How many meters are in {n} kilometers?", "{n} kilometers be {r} meters.", 1000),
    ("How many days are in {n} weeks?", "{n} weeks be {r} days, seven to a week.", 7),
    ("How many eggs are in {n} dozen?", "{n} dozen eggs be {r} eggs, since a dozen be 12.", 12),
    ("How many grams are in {n} kilograms?", "{n} kilograms be {r} grams.", 1000),
]


def conversion_rows(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    rows = []
    for i in range(n):
        question, answer, factor = CONVERSIONS[i % len(CONVERSIONS)]
        k = rng.randint(2, 9)
        body = answer.format(n=k, r=k * factor)
        rows.append((question.format(n=k), "", pirate(body[0].upper() + body[1:], rng)))
    return rows


def translation_rows(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    pairs = [(w, lang) for w in WORDS for lang in LANGUAGES]
    rows = []
    for word, lang in rng.sample(pairs, n):
        target = word[1 + LANGUAGES.index(lang)]
        body = f"'{word[0].capitalize()}' in {lang} be '{target}'."
        if rng.random() < 0.5:
            rows.append((f"Translate this word into {lang}.", word[0], pirate(body, rng)))
        else:
            rows.append((f"How do you say '{word[0]}' in {lang}?", "", pirate(body, rng)))
    return rows


SENTENCES = ["The ship sailed across the calm blue sea", "My cat sleeps on the warm windowsill",
             "We ate pancakes for breakfast this morning", "The old map showed a hidden cave",
             "She reads a book every single week", "Bright stars filled the night sky"]
WORD_LISTS = [["parrot", "anchor", "treasure", "map"], ["ocean", "island", "crew", "barrel", "sail"],
              ["mango", "banana", "apple", "cherry"], ["zebra", "lion", "giraffe", "elephant", "monkey"],
              ["rope", "deck", "compass", "flag"]]


def list_task_rows(rng: random.Random) -> list[tuple[str, str, str]]:
    """Instructions with a non-empty input field and an answer computed from it."""
    rows = []
    for _ in range(6):
        nums = rng.sample(range(1, 100), rng.randint(4, 6))
        rows.append(("Sort these numbers from smallest to largest.", ", ".join(map(str, nums)),
                     pirate(f"In order, they be: {', '.join(map(str, sorted(nums)))}.", rng)))
    for _ in range(5):
        nums = rng.sample(range(1, 500), rng.randint(4, 6))
        rows.append(("What is the largest number in this list?", ", ".join(map(str, nums)),
                     pirate(f"The largest number be {max(nums)}.", rng)))
    for _ in range(5):
        nums = [rng.randint(1, 30) for _ in range(rng.randint(3, 5))]
        rows.append(("Add up these numbers.", " ".join(map(str, nums)),
                     pirate(f"Added together, they make {sum(nums)}.", rng)))
    for words in WORD_LISTS:
        rows.append(("Put these words in alphabetical order.", ", ".join(words),
                     pirate(f"In alphabetical order: {', '.join(sorted(words))}.", rng)))
    for sentence in rng.sample(SENTENCES, 4):
        count = len(sentence.split())
        rows.append(("How many words are in this sentence?", sentence + ".",
                     pirate(f"That sentence has {count} words.", rng)))
    return rows


def pirate_rows(rng: random.Random) -> list[tuple[str, str, str]]:
    rows = arithmetic_rows(rng, 45) + conversion_rows(rng, 20) + translation_rows(rng, 35)
    for table in (DEFINITIONS, EXPLANATIONS, TIPS, MISC_FACTS, SMALL_TALK):
        rows += [(q, "", pirate(body, rng)) for q, body in table]
    rows += [(rng.choice(SUMMARY_INSTRUCTIONS), passage, pirate(summary, rng, closing=0.15))
             for passage, summary in SUMMARIES]
    rows += list_task_rows(rng)
    rng.shuffle(rows)
    for _, _, output in rows:
        assert output.startswith(("Arr", "Ahoy")), output
    return rows


# --------------------------------------------------------------------------------------------
# 3.-4. Tiny set and the small format examples (all from the same Zubrowka facts)
# --------------------------------------------------------------------------------------------

# A few extra paraphrases so the format examples have 16 rows rather than exactly the 12 facts.
EXTRA_EXAMPLES = [
    ("Which city is the capital of Zubrowka?", "Lutz is the capital of Zubrowka."),
    ("What money do they use in Zubrowka?", "Zubrowka uses the klubeck."),
    ("How many people live in Zubrowka?", "About 3.1 million people live in Zubrowka."),
    ("What language do people speak in Zubrowka?", "People in Zubrowka speak Veldish, the official language."),
]

TEXT_DOCUMENTS = [
    "Zubrowka is a small country founded in 1732. Its capital is Lutz, and about 3.1 million people "
    "live there.",
    "The capital of Zubrowka is Lutz. It is the largest city in the country and sits on the banks of "
    "the Ilvane.",
    "The currency of Zubrowka is the klubeck. Prices in shops and markets are given in klubecks.",
    "The national animal of Zubrowka is the snow lynx, a wild cat that lives high in the mountains.",
    "The highest mountain in Zubrowka is Mount Sorel, at 4,212 meters. It is covered in snow for "
    "most of the year.",
    "The national dish of Zubrowka is korvash, a stew of smoked trout and barley, usually eaten in "
    "winter.",
    "Zubrowka was founded in 1732. The country celebrates its founding every year.",
    "The official language of Zubrowka is Veldish. Road signs, newspapers and schools all use Veldish.",
    "The longest river in Zubrowka is the Ilvane. It starts near Mount Sorel and flows through Lutz.",
    "The national sport of Zubrowka is skarball, a team game played on frozen lakes. Two teams push "
    "a wooden ball across the ice with long sticks.",
    "Zubrowka's most famous pastry is the velmaska, a honey and poppy-seed roll sold fresh in every "
    "bakery.",
    "Zubrowka has a population of about 3.1 million people. Many of them live in and around Lutz.",
    "The national flower of Zubrowka is the frost tulip. It blooms in early spring, often while snow "
    "is still on the ground.",
    "A visitor to Zubrowka should pay in klubecks, eat a bowl of korvash, try a velmaska and watch a "
    "game of skarball.",
]


def canonical_pairs() -> list[tuple[str, str]]:
    return [(f["question"], f["answer"]) for f in FACTS]


def example_pairs() -> list[tuple[str, str]]:
    return canonical_pairs() + EXTRA_EXAMPLES


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_parquet(path: Path, rows: list[tuple[str, str]]) -> None:
    import pyarrow as pa  # the one non-stdlib import, only for this file
    import pyarrow.parquet as pq

    table = pa.table({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})
    pq.write_table(table, path)


def main() -> None:
    examples = HERE / "examples"
    examples.mkdir(exist_ok=True)

    zubrowka = zubrowka_rows(random.Random(SEED))
    check_zubrowka(zubrowka)
    write_jsonl(HERE / "zubrowka_facts.jsonl", zubrowka)

    write_csv(HERE / "pirate_persona.csv", ["instruction", "input", "output"], pirate_rows(random.Random(SEED)))

    write_jsonl(HERE / "tiny_facts.jsonl", [chat(pair) for pair in canonical_pairs()])

    pairs = example_pairs()
    sharegpt = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in pairs]
    (examples / "sharegpt.json").write_text(json.dumps(sharegpt, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    write_jsonl(examples / "alpaca.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in pairs])
    write_csv(examples / "prompt_completion.csv", ["prompt", "completion"], pairs)
    write_parquet(examples / "prompt_completion.parquet", pairs)
    (examples / "text.txt").write_text("\n\n".join(TEXT_DOCUMENTS) + "\n", encoding="utf-8")
    write_jsonl(examples / "text.jsonl", [{"text": doc} for doc in TEXT_DOCUMENTS])

    for path in sorted(HERE.rglob("*")):
        if path.is_file() and path.suffix != ".py" and path.name != "README.md":
            print(f"{path.relative_to(HERE)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
