"""Problem Statement:
In the sentence `sentence`, which `k` words occur most often? Ties are broken alphabetically.

Input Output Description:
Input:
    sentence (str): lowercase words separated by spaces, at most 20 words.
    k (int): 1 <= k <= 3.
Output:
    return (list of str): the k most frequent words, most frequent first.
"""
import random
from collections import Counter


def main_solution(sentence, k):
    counts = Counter(sentence.split())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[:k]]


def input_generator():
    words = ["red", "fox", "dog", "sun", "sky", "sea"]
    return {"sentence": " ".join(random.choice(words) for _ in range(random.randint(1, 20))), "k": random.randint(1, 3)}
