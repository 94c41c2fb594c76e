from collections import deque


def ladder_length(begin, end, words):
    words = set(words)
    queue = deque([(begin, 1)])
    seen = {begin}
    while queue:
        word, length = queue.popleft()
        if word == end:
            return length
        for i in range(len(word)):
            for letter in "abcdefghijklmnopqrstuvwxyz":
                candidate = word[:i] + letter + word[i + 1:]
                if candidate in words and candidate not in seen:
                    seen.add(candidate)
                    queue.append((candidate, length + 1))
    return 0


print(ladder_length("hit", "cog", ["hot", "dot", "dog", "lot", "log", "cog"]))
