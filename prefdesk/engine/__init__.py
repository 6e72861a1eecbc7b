"""The training engine every optimizer plugin shares.

    tokenize   encode(tokenizer, prompt, answer, max_length) -> Encoded (exact answer boundary)
               encode_prompt(tokenizer, prompt, max_length) -> prompt ids for generation
    batching   encode_pair(s)(tokenizer, pair(s), max_length) -> EncodedPair(s)
               collate(encoded_pairs, pad_id) -> Batch: chosen rows then rejected rows, right-padded
               pad_sequences(encodings, pad_id) -> input_ids / attention_mask / answer_mask
               bucketed_batches(lengths, batch_size, seed, epoch) -> seeded length-bucketed order
    logprobs   sequence_logps(model, input_ids, attention_mask, answer_mask) -> (sum logp [B], tokens [B])
               token_logps(...) -> [B, T]; pair_logps(policy, encoded_pairs, reference=...) -> [N, 4]
               compute_context(model, dtype, device_type): the engine's mixed precision
    refcache   reference_logps(policy, encoded_pairs, batch_size, cache) -> [N, 4], cached on disk
    losses     PairLogps (what a loss sees), LossOutput (what it returns), step_metrics
    loop       train(policy, pairs, params, tracker, loss_fn, ...) -> TrainResult; TrainingDiverged

A plugin is its Params, its loss `PairLogps -> LossOutput`, and a `fit` that calls
`loop.train` (see plugins/dpo.py).
"""
