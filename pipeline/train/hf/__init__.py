"""Hugging Face folders in and out of a run (save_pretrained layout: model + tokenizer):

    init_from.py          model.init_from: a save_pretrained folder, checked against the data
    export.py             RUN/final (HF model + tokenizer)
    export_checkpoint.py  lai-export: any complete checkpoint -> a save_pretrained folder
"""
