"""The training engine every optimizer plugin shares.

    tokenize   encode(tokenizer, prompt, answer, max_length) -> Encoded (exact answer boundary)
               encode_prompt(tokenizer, prompt, max_length) -> prompt ids for generation
    batching   encode_pair(s)(tokenizer, pair(s), max_length) -> EncodedPair(s)
               collate(encoded_pairs, pad_id) -> Batch: one packed row [prompt | chosen | rejected]
               per pair (shared=False: chosen rows then rejected rows); pack_groups(groups, pad_id)
               for any number of answers to one prompt
               pad_sequences(encodings, pad_id) -> input_ids / attention_mask / answer_mask
               bucketed_batches(lengths, batch_size, seed, epoch) -> seeded length-bucketed order
    logprobs   batch_logps(model, **batch.inputs()) -> (sums, tokens) [items, answers]
               answers_logps(policy, [(prompt messages, answers)], role=...) -> (sum, tokens) per
               answer, the prompt computed once per item (multiple choice, held-out pairs)
               group_logps / pair_logps(policy, encoded_pairs, reference=...) -> [N, 4]
               sequence_logps / token_logps(model, ids, attention_mask, answer_mask)
               compute_context(model, dtype, device_type): the engine's mixed precision
    refcache   reference_logps(policy, encoded_pairs, batch_size, cache) -> [N, 4], cached on disk
    losses     PairLogps (what a loss sees), LossOutput (what it returns), step_metrics
    loop       train(ctx, params, loss_fn, name=..., use_reference=...) -> TrainResult; TrainingDiverged
    autocompile  torch.compile of the decoder layers when the steps left pay for it

A plugin is its Params, its loss `PairLogps -> LossOutput`, and a `fit` that calls
`loop.train` (see plugins/dpo.py).
"""
