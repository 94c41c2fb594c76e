import sys

# Convert Celsius readings from stdin to Fahrenheit and report the warmest day.
readings = [float(x) for x in sys.stdin.read().split()] or [12.5, 17.0, 9.25]
fahrenheit = [c * 9 / 5 + 32 for c in readings]
warmest = max(range(len(readings)), key=lambda i: readings[i])
for day, (c, f) in enumerate(zip(readings, fahrenheit)):
    print(f"day {day}: {c:.1f} C = {f:.1f} F")
print("warmest day:", warmest)
