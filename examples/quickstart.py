"""Quickstart: one-step-ahead regression of a cosine series with an LSTM.

The material's task: the series cos(0), cos(1), ..., cos(199); windows of 50
values predict the next one; the first 100 windows train, the next 50 validate.
Built from cyrnn's model API (layers + Sequential + optimizer).
"""

import time

import numpy as np

import cyrnn
from cyrnn.training import train_step

series = np.cos(np.arange(200)).astype(np.float32)
windows = np.lib.stride_tricks.sliding_window_view(series, 51)
x, y = windows[:, :50, None], windows[:, 50:]
x_train, y_train, x_val, y_val = x[:100], y[:100], x[100:150], y[100:150]

rng = np.random.default_rng(0)
model = cyrnn.Sequential([
    cyrnn.LSTM(1, 32, return_sequences=False, random_state=rng),
    cyrnn.Dense(32, 1, random_state=rng),
])
optimizer = cyrnn.optim.Adam(model, lr=1e-2, clip_norm=1.0)

start = time.perf_counter()
for epoch in range(30):
    order = rng.permutation(len(x_train))
    for batch in np.array_split(order, 4):
        train_step(model, optimizer, "mse", x_train[batch], y_train[batch])
rmse = float(np.sqrt(np.mean((model.forward(x_val) - y_val) ** 2)))
print(f"backends available: {cyrnn.backends.available()} (auto uses the first)")
print(f"validation RMSE after 30 epochs: {rmse:.4f} "
      f"(the material's NumPy RNN: 0.569); {time.perf_counter() - start:.1f} s")
