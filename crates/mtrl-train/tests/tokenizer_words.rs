//! The from-scratch tokenizer: known words are one token, unknown ones split into pieces,
//! any ASCII text round-trips exactly, specials stay whole.

use mtrl_train::Tokenizer;

#[test]
fn words_are_single_tokens_and_any_ascii_round_trips() {
    let words: Vec<String> = ["lookup_order", "refund", "decision"]
        .map(String::from)
        .to_vec();
    let specials = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
    let tok = Tokenizer::from_words(&words, &specials, "<|im_end|>").unwrap();
    assert_eq!(tok.encode("refund").unwrap().len(), 1);
    assert_eq!(tok.encode("lookup_order").unwrap().len(), 1);
    // "refunds" is "refund" + "s"; "xyz" is three characters.
    assert_eq!(tok.encode("refunds").unwrap().len(), 2);
    assert_eq!(tok.encode("xyz").unwrap().len(), 3);
    let text =
        "<|im_start|>user\n{\"order_id\": \"R417\", \"decision\": \"refunds\"}\t~`^|<|im_end|>\n";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(ids[0], tok.token_to_id("<|im_start|>").unwrap());
    assert_eq!(tok.stop_ids(), &[tok.token_to_id("<|im_end|>").unwrap()]);
    // "##" in the text itself survives decoding.
    let hashes = "a ## b #x";
    assert_eq!(tok.decode(&tok.encode(hashes).unwrap()).unwrap(), hashes);
    // Outside ASCII: <unk>, never a panic.
    assert!(tok.encode("café").is_ok());
}
