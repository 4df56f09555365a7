#!/usr/bin/env bash
# Regenerates the shipped IVR prompts: 8 kHz mono WAV encoded as GSM 06.10 (format tag
# 0x0031, 65 bytes per 320 samples, 13 kbit/s). 8 kHz is what FreeSWITCH plays on a
# narrowband call without resampling; GSM keeps the whole set near 230 KB instead of the
# 2.2 MB of 16-bit PCM, and mod_sndfile (libsndfile) decodes it as installed. libsndfile
# cannot seek in GSM, so a prompt plays from its start (no `file@@offset`). Run by hand
# (not at install) after editing a text below; the WAV files are committed.
#
#   apt-get install -y espeak-ng sox
#   ivr/prompts/make_prompts.sh
#
# A city with a recorded voice replaces the files with its own under the same names
# (any 8 kHz mono WAV libsndfile reads: GSM, A-law, 16-bit PCM).
set -euo pipefail
cd "$(dirname "$0")"
command -v espeak-ng >/dev/null && command -v sox >/dev/null || {
    echo "needs espeak-ng and sox (apt-get install -y espeak-ng sox)" >&2
    exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

declare -A VOICE=([zh]=cmn [en]=en-us)
declare -A SPEED=([zh]=250 [en]=190)

# encode IN OUT: the shipped encoding, applied once at the end (working files stay 16-bit
# PCM). The audio is padded with silence to an even number of 320-sample GSM blocks: sox
# counts the RIFF pad byte after an odd number of 65-byte blocks as data, and libsndfile
# then decodes a phantom last block, a 40 ms burst of noise at the end of the prompt.
encode() {
    local n
    n=$(soxi -s "$1")
    sox -V1 "$1" -r 8000 -c 1 -e gsm-full-rate "$2" pad 0 "$(((640 - n % 640) % 640))s"
}

# synth LANG TEXT OUT: speak, resample to 8 kHz mono 16-bit, trim silence at both ends
synth() {
    espeak-ng -v "${VOICE[$1]}" -s "${SPEED[$1]}" -w "$tmp/raw.wav" "$2"
    sox -V1 "$tmp/raw.wav" -r 8000 -c 1 -b 16 -e signed-integer "$3" gain -n -3 \
        silence 1 0.02 0.5% -1 0.2 0.5% reverse silence 1 0.02 0.5% reverse pad 0 0.08
}

# say LANG NAME TEXT [LANG2 TEXT2]: a prompt, optionally followed by a phrase in another
# language (the "For English, press 8" at the end of the Mandarin menu)
say() {
    mkdir -p "$1"
    if [[ $# -eq 5 ]]; then
        synth "$1" "$3" "$tmp/a.wav"
        synth "$4" "$5" "$tmp/b.wav"
        sox -V1 "$tmp/a.wav" "$tmp/b.wav" "$tmp/ab.wav"
        encode "$tmp/ab.wav" "$1/$2.wav"
    else
        synth "$1" "$3" "$tmp/a.wav"
        encode "$tmp/a.wav" "$1/$2.wav"
    fi
}

for lang in zh en; do
    mkdir -p "$lang"
    sox -V1 -n -r 8000 -c 1 -b 16 -e signed-integer "$tmp/beep.wav" synth 0.35 sine 1000 gain -8 pad 0.05 0.1
    encode "$tmp/beep.wav" "$lang/beep.wav"
done

say zh greeting "您好，一二三四五市民热线，正在为您转接人工服务。"
say zh please_wait "请稍候。"
say zh position_is "您排在第"
say zh position_suffix "位。"
say zh callback_offer "本机号码回电请按1，其他号码请按2。"
say zh enter_phone_number "请输入号码，按井号结束。"
say zh callback_confirmed "已为您登记回电。"
say zh emergency_notice "正在为您转接紧急救援，请不要挂机。"
say zh emergency_menu "报警按1，火警按2，急救按3，交通事故按4。"
say zh after_hours "现在是非工作时间。回电请按1，留言请按2。"
say zh voicemail_intro "请在提示音后留言，按井号结束。"
say zh card_menu "查余额按1，挂失按2，人工按0，紧急求助按9。" en "English, 8."
say zh enter_card_number "请输入卡号，按井号结束。"
say zh enter_id_last6 "请输入身份证后六位，X按星号。"
say zh enter_pin "请输入六位密码。"
say zh card_frozen "已挂失冻结，回执号是"
say zh wrong_pin "信息不正确。"
say zh card_locked "密码已锁定。"
say zh card_unknown "卡号不正确。"
say zh balance_is "您的余额是"
say zh yuan "元。"
say zh point "点"
say zh goodbye "感谢来电，再见。"
say zh survey_question "满意按1，基本满意按2，不满意按3。"
say zh thank_you "谢谢您的评价。"
say zh invalid_input "输入有误。"
zh_digits=(零 一 二 三 四 五 六 七 八 九)
for d in 0 1 2 3 4 5 6 7 8 9; do say zh "digit_$d" "${zh_digits[$d]}"; done
say zh ten "十"
say zh hundred "百"
say zh thousand "千"
say zh wan "万"

say en greeting "Welcome to the one two three four five hotline. Connecting you to an agent."
say en please_wait "Please wait."
say en position_is "You are number"
say en position_suffix "in the queue."
say en callback_offer "To be called back on this number, press 1. Another number, 2."
say en enter_phone_number "Enter your phone number, then press hash."
say en callback_confirmed "Your callback is booked."
say en emergency_notice "Connecting you to emergency services. Stay on the line."
say en emergency_menu "Police, 1. Fire, 2. Ambulance, 3. Traffic, 4."
say en after_hours "We are closed. Callback, press 1. Message, press 2."
say en voicemail_intro "Leave a message after the tone."
say en card_menu "Balance, 1. Lost card, 2. Agent, 0. Emergency, 9." zh "中文按7。"
say en enter_card_number "Enter your card number, then press hash."
say en enter_id_last6 "Last six of your ID number. For X, press star."
say en enter_pin "Enter your six digit PIN."
say en card_frozen "Card frozen. Receipt number"
say en wrong_pin "Those details are not correct."
say en card_locked "Your PIN is locked."
say en card_unknown "That card number is not valid."
say en balance_is "Your balance is"
say en yuan "yuan."
say en point "point"
say en goodbye "Thank you for calling. Goodbye."
say en survey_question "Satisfied, 1. Fairly satisfied, 2. Not satisfied, 3."
say en thank_you "Thank you for your feedback."
say en invalid_input "Sorry, that is not valid."
en_words=(zero one two three four five six seven eight nine)
for d in 0 1 2 3 4 5 6 7 8 9; do say en "digit_$d" "${en_words[$d]}"; done
teens=(ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen)
for i in 0 1 2 3 4 5 6 7 8 9; do say en "n1$i" "${teens[$i]}"; done
tens=("" "" twenty thirty forty fifty sixty seventy eighty ninety)
for i in 2 3 4 5 6 7 8 9; do say en "n${i}0" "${tens[$i]}"; done
say en hundred "hundred"
say en thousand "thousand"
say en million "million"

du -sh zh en
